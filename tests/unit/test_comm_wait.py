"""How a rank waits for a collective with a timeout (`distributed.comm._wait`): it polls without
sleeping for a short while, unless its host is oversubscribed, then backs off with sleeps."""
import os

from syncnorm.distributed import comm


def test_spins_when_ranks_fit_the_cores(monkeypatch):
    for var in comm._LOCAL_SIZE_VARS:
        monkeypatch.delenv(var, raising=False)
    assert comm.spin_seconds() == comm.SPIN_SECONDS  # no launcher: one process
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_SIZE", str(os.cpu_count()))
    assert comm.spin_seconds() == comm.SPIN_SECONDS


def test_no_spin_when_oversubscribed(monkeypatch):
    for var in comm._LOCAL_SIZE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MPI_LOCALNRANKS", str(os.cpu_count() + 1))
    assert comm.spin_seconds() == 0.0


class _Request:
    """A request that completes at its n-th Test."""

    def __init__(self, n: int) -> None:
        self.left = n

    def Test(self) -> bool:  # noqa: N802 - mpi4py's name
        self.left -= 1
        return self.left <= 0


def test_wait_returns_when_the_request_completes_and_times_out_otherwise(monkeypatch):
    comm._wait(_Request(50), timeout=5.0, what="Allreduce")
    # the real error also arms the exit watchdog of a rank (failsafe): not in this process
    monkeypatch.setattr(comm, "timed_out", lambda what, timeout, where: TimeoutError(what))
    monkeypatch.setattr(comm, "_where", lambda c: "world rank 0 on here")
    try:
        comm._wait(_Request(10 ** 12), timeout=0.05, what="test Allreduce")
    except TimeoutError as e:
        assert "test Allreduce" in str(e)
    else:
        raise AssertionError("a request that never completes must time out")
