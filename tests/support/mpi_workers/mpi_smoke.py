import numpy as np
import pytest

from syncnorm import distributed as dist


@pytest.mark.mpi(min_size=1)
def test_world_matches_launcher():
    from mpi4py import MPI
    assert dist.get_world_size() == MPI.COMM_WORLD.Get_size()
    assert dist.get_rank() == MPI.COMM_WORLD.Get_rank()
