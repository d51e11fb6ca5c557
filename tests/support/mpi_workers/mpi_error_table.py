"""The multi-rank rows of docs/errors.md, raised for real on 2 ranks (run by tests/docs/test_error_table.py).

Each test makes every rank raise the row's error (swapping roles where only some ranks would) and
checks the exception type and message against the table on that rank, then prints
`ERROR-ROW-OK <id> rank <r>` for the parent test to count.
"""
from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

from error_doc import parse_rows, matches
from syncnorm import distributed as dist
from syncnorm import nn
from syncnorm.parallel import DistributedDataParallel

WORLD = MPI.COMM_WORLD
P, RANK = WORLD.Get_size(), WORLD.Get_rank()
ROWS = {r.id: r for r in parse_rows()}
X = np.arange(12, dtype=np.float32).reshape(6, 2)


def check(row_id: str, info: pytest.ExceptionInfo) -> None:
    row, e = ROWS[row_id], info.value
    assert type(e).__name__ == row.type_name, (row_id, type(e), str(e))
    if row.base_name:
        assert row.base_name in {c.__name__ for c in type(e).__mro__}, row.exception
    assert matches(row, str(e)), f"{row_id}: {e}\n  does not match\n{row.message}"
    print(f"\nERROR-ROW-OK {row_id} rank {RANK}", flush=True)


@pytest.mark.mpi(min_size=2)
def test_out_of_step():
    a, b = nn.SyncBatchNorm(2), nn.SyncBatchNorm(2)
    a(X)  # in step
    with pytest.raises(nn.RanksOutOfStepError) as info:
        (b if RANK == 1 else a)(X)  # rank 1 skips `a`
    check("out-of-step", info)


@pytest.mark.mpi(min_size=2)
def test_peer_input():
    for bad_rank in (1, 0):  # each rank once the one whose peer had bad input
        m = nn.SyncBatchNorm(2)
        if RANK == bad_rank:
            with pytest.raises(ValueError):
                m(np.zeros((3, 5), np.float32))
        else:
            with pytest.raises(dist.PeerInputError) as info:
                m(X)
            check("peer-input", info)


@pytest.mark.mpi(min_size=2)
def test_not_a_member():
    only = [dist.new_group([r]) for r in (0, 1)]  # every rank makes both (members-only collective)
    layers = [nn.SyncBatchNorm(2, process_group=g) for g in only]  # same layer ids on every rank
    with pytest.raises(ValueError) as info:
        layers[1 - RANK](X)
    check("sbn-not-member", info)
    layers[RANK](X)  # its own group (of 1) is fine
    with pytest.raises(ValueError) as info:
        DistributedDataParallel(nn.Linear(2, 2), process_group=only[1 - RANK])
    check("ddp-not-member", info)


@pytest.mark.mpi(min_size=2)
def test_ddp_layout():
    with pytest.raises(ValueError) as info:
        DistributedDataParallel(nn.Linear(2, 2 + RANK))
    check("ddp-layout", info)


@pytest.mark.mpi(min_size=2)
def test_buffers_of_different_sizes():
    """Without SYNCNORM_CHECK_ORDER, ranks calling layers of 3 and 200 channels pass buffers of
    different sizes; Open MPI reports the truncation on the rank with the smaller buffer and the
    fingerprint catches the other. Roles swapped so that each rank sees the MPI error once."""
    for small in (0, 1):
        a, b = nn.SyncBatchNorm(3), nn.SyncBatchNorm(200)
        xa = np.ones((2, 3), np.float32) * np.arange(2)[:, None]
        xb = np.ones((2, 200), np.float32) * np.arange(2)[:, None]
        with pytest.raises(nn.RanksOutOfStepError) as info:
            a(xa) if RANK == small else b(xb)
        check("out-of-step-mpi" if RANK == small else "out-of-step", info)
