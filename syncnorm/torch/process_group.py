"""torch.distributed inside an MPI job, without MASTER_ADDR/MASTER_PORT by hand.

`init_process_group()` gives torch.distributed the MPI world's rank and size; rank 0 opens torch's
rendezvous store (a TCPStore on a port the system picks, so nothing can collide) and sends its
address and port to the other ranks over MPI (one broadcast of a fixed-size byte buffer). The
address is 127.0.0.1 when every rank runs on rank 0's host, else the address rank 0 reaches the
other hosts from; MASTER_ADDR / MASTER_PORT in the environment take precedence. Under torchrun
(no MPI launcher) it is torch's own `init_process_group(init_method="env://")`, so one training
script runs unchanged under both launchers (and alone, as a world of 1).
"""
from __future__ import annotations

import datetime
import os
import socket
import time

import numpy as np
import torch.distributed as dist

from ..distributed import all_gather, all_reduce, broadcast, split_by_node
from ..distributed.env import wants_mpi
from ..distributed.group import get_world_group
from ..distributed.torch_backend import started_by_torchrun

__all__ = ["init_process_group", "destroy_process_group"]

_ADDR_BYTES = 256


def _timedelta(timeout: float | datetime.timedelta | None) -> datetime.timedelta | None:
    if timeout is None or isinstance(timeout, datetime.timedelta):
        return timeout
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ValueError(f"init_process_group: timeout must be a positive number of seconds, a "
                         f"datetime.timedelta or None, got {timeout!r}")
    return datetime.timedelta(seconds=float(timeout))


def _all_on_one_host(world) -> bool:
    """True when every rank shares one node (ranks that share memory); collective over the world."""
    node, _ = split_by_node()
    here = np.array([1 if node.size == world.size else 0])
    return bool(all_reduce(here, world, label="init_process_group host check")[0] == world.size)


def _address_towards_peers(world) -> str:
    """Rank 0's address on the interface that routes to the other hosts (a UDP socket's connect
    sends nothing: it only asks the kernel for the route)."""
    name = np.zeros(_ADDR_BYTES, np.uint8)
    raw = socket.gethostname().encode()[:_ADDR_BYTES]
    name[:len(raw)] = np.frombuffer(raw, np.uint8)
    rows = all_gather(name, world, label="init_process_group host names")
    names = [bytes(r[r != 0]).decode() for r in rows]
    if world.rank != 0:
        return ""
    mine = names[0]
    for other in names[1:]:
        if other == mine:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect((socket.gethostbyname(other), 9))
                return s.getsockname()[0]
        except OSError:
            continue
    return socket.gethostbyname(mine)


def init_process_group(backend: str = "gloo", timeout: float | datetime.timedelta | None = None
                       ) -> None:
    """Initialize torch.distributed's default group over the MPI job's ranks (same rank, same
    size); collective over the MPI world. Under torchrun: from torchrun's environment (env://).
    In a plain `python` process: a world of 1.

    backend: any torch.distributed backend for CPU tensors ("gloo"). timeout: seconds or a
    timedelta for the rendezvous and torch's collectives (None: torch's default, 30 minutes)."""
    if dist.is_initialized():
        raise RuntimeError("init_process_group: torch.distributed is already initialized (a world of "
                           f"{dist.get_world_size()}); call it once, before building the model")
    td = _timedelta(timeout)
    kw = {} if td is None else {"timeout": td}
    if not wants_mpi() and started_by_torchrun():
        dist.init_process_group(backend, init_method="env://", **kw)
        return
    world = get_world_group()
    addr = os.environ.get("MASTER_ADDR", "")
    if not addr:
        one_host = world.comm is None or _all_on_one_host(world)
        addr = "127.0.0.1" if one_host else _address_towards_peers(world)
    port = int(os.environ.get("MASTER_PORT", "0"))
    store_timeout = td if td is not None else datetime.timedelta(minutes=30)
    store = None
    if world.rank == 0:
        store = dist.TCPStore(addr, port, world.size, True, timeout=store_timeout,
                              wait_for_workers=False)
        port = store.port
    if world.comm is not None:
        msg = np.zeros(_ADDR_BYTES + 1, np.int64)  # port, then the address bytes
        if world.rank == 0:
            raw = addr.encode()[:_ADDR_BYTES]
            msg[0] = port
            msg[1:1 + len(raw)] = np.frombuffer(raw, np.uint8)
        msg = broadcast(msg, world, 0, label="init_process_group address Bcast")
        port = int(msg[0])
        addr = bytes(msg[1:][msg[1:] != 0].astype(np.uint8)).decode()
    if store is None:
        store = dist.TCPStore(addr, port, world.size, False, timeout=store_timeout)
    dist.init_process_group(backend, store=store, rank=world.rank, world_size=world.size, **kw)


def destroy_process_group(pause: float = 0.2) -> None:
    """barrier, destroy the default group, then a short pause: the teardown that keeps torch
    2.13's gloo worker threads from aborting the process at exit (docs/pytorch.md)."""
    if not dist.is_initialized():
        return
    dist.barrier()
    dist.destroy_process_group()
    time.sleep(pause)

