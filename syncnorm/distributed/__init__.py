"""Communication: process groups, the statistics exchange, and group-level collectives
(`all_reduce`, `all_gather`, `broadcast`) for applications. Every MPI call lives in `comm.py`, the
torch.distributed one in `torch_backend.py`.

Works unchanged under `mpirun -n P` / `srun`, under `torchrun` (synchronized layers then use torch's
default group: `group.layer_group`) and in a plain `python` process (a world of size 1 that never
loads MPI).
"""
from .collectives import all_gather, all_reduce, broadcast
from .comm import CollectiveTimeoutError, default_timeout
from .env import MPIMismatchError
from .exchange import PeerInputError, RanksOutOfStepError
from .group import (ProcessGroup, as_group, get_rank, get_world_group, get_world_size, new_group,
                    new_subgroups, new_subgroups_by_enumeration, split_by_node)

__all__ = ["ProcessGroup", "as_group", "get_rank", "get_world_group", "get_world_size", "new_group",
           "new_subgroups", "new_subgroups_by_enumeration", "split_by_node",
           "all_reduce", "all_gather", "broadcast",
           "CollectiveTimeoutError", "MPIMismatchError", "PeerInputError", "RanksOutOfStepError",
           "default_timeout"]
