"""syncnorm.torch wherever PyTorch CPU users train: under torchrun (statistics over gloo, no MPI),
under an MPI launcher (statistics over MPI, torch.distributed set up by
`syncnorm.torch.init_process_group`), and under Lightning's Trainer. The workers are in
tests/support/mpi_workers/; every job runs in its own session, killed whole on timeout."""
import importlib.util
import re

import pytest

pytest.importorskip("torch", reason="syncnorm.torch needs PyTorch (pip install 'syncnorm[torch]')")

from mpi_harness import run_mpi, run_ranks, run_torch_script, run_torchrun  # noqa: E402

WORKERS = "tests/support/mpi_workers"
# one torch thread per rank (ranks oversubscribe 2 cores), gloo on loopback
MPI_ENV = {"OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "SYNCNORM_COLLECTIVE_TIMEOUT": "120"}


def launch(launcher: str, nprocs: int, args: list[str], timeout: float):
    """Run ARGS on NPROCS ranks started by torchrun or by the MPI launcher (`syncnorm-launch`'s)."""
    if launcher == "torchrun":
        return run_torchrun(nprocs, args, timeout=timeout)
    return run_mpi(nprocs, args, timeout=timeout, env=MPI_ENV)


@pytest.mark.parametrize("launcher,nprocs", [
    ("torchrun", 4), ("mpirun", 2),
    pytest.param("torchrun", 2, marks=pytest.mark.slow), pytest.param("mpirun", 4, marks=pytest.mark.slow)])
def test_resnet18_under_ddp_follows_the_single_process_run(launcher, nprocs):
    """The same script under both launchers: 3 SGD steps of ResNet-18 equal plain BatchNorm on the
    whole batch (checked in the worker); the statistics go over gloo under torchrun (no MPI loaded)
    and over MPI under an MPI launcher."""
    job = launch(launcher, nprocs, [f"{WORKERS}/torch_resnet.py"], timeout=300).check()
    ok = re.findall(r"RESNET-OK rank (\d) of (\d) over (\w+) \(mpi4py loaded: (\w+)\)", job.output)
    assert sorted(int(r) for r, *_ in ok) == list(range(nprocs)), job.output[-3000:]
    want = ("torch", "False") if launcher == "torchrun" else ("mpi", "True")
    assert all((t, m) == want for _, _, t, m in ok), ok


@pytest.mark.parametrize("launcher", ["torchrun", "mpirun"])  # not "mpi": pytest-mpi's keyword
def test_torch_groups_empty_rank_extra_layers_and_out_of_step_on_4_ranks(launcher):
    job = launch(launcher, 4, [f"{WORKERS}/torch_groups.py"], timeout=240).check()
    done = set(re.findall(r"CASE-OK (\S+) rank (\d)", job.output))
    cases = ("subgroups", "empty-rank", "extra-layers", "numpy", "out-of-step")
    assert done == {(c, str(r)) for c in cases for r in range(4)}, job.output[-3000:]


@pytest.mark.child_kernels("numpy")  # subject: a peer's death, not the kernels (conftest.py _child_kernels)
def test_a_gloo_peer_killed_mid_step_ends_the_survivor():
    job = run_ranks(2, [f"{WORKERS}/torch_peer_killed.py", "kill"], timeout=120)
    out = job.output
    assert not job.timed_out, out[-3000:]
    assert "IN-STEP rank 0" in out and "SURVIVOR-RAISED RuntimeError rank 0" in out, out[-3000:]
    assert "SURVIVOR-WENT-ON" not in out, out[-3000:]
    assert re.search(r"^\[run_ranks\] rank 0 exit [1-9]", out, re.M), out[-3000:]
    assert re.search(r"\[syncnorm fatal\] world rank 0 on \S+: RuntimeError in the torch.distributed "
                     r"backward Allreduce of syncnorm.torch.SyncBatchNorm #0 \(3 channels\) in "
                     r"ProcessGroup\(torch default group, ranks=\[0, 1\]\): .*(closed|reset) by peer",
                     out), out[-3000:]


@pytest.mark.child_kernels("numpy")  # subject: the timeout, not the kernels (conftest.py _child_kernels)
def test_a_rank_that_never_arrives_times_out_over_gloo():
    job = run_torchrun(2, [f"{WORKERS}/torch_peer_killed.py", "late"], timeout=120)
    out = job.output
    assert not job.timed_out and job.returncode != 0, out[-3000:]
    assert "SURVIVOR-RAISED CollectiveTimeoutError rank 0" in out, out[-3000:]
    assert re.search(r"\[syncnorm fatal\] world rank 0 on \S+: CollectiveTimeoutError: backward "
                     r"Allreduce of syncnorm.torch.SyncBatchNorm #0 \(3 channels\) in "
                     r"ProcessGroup\(torch default group, ranks=\[0, 1\]\) did not complete within 1 s",
                     out), out[-3000:]


def test_lightning_trainer_with_the_plugin_follows_the_single_process_run():
    if importlib.util.find_spec("lightning") is None:
        pytest.skip("Lightning is not installed (pip install 'syncnorm[lightning]')")
    job = run_torch_script([f"{WORKERS}/torch_lightning.py", "2"], timeout=240).check()
    assert sorted(re.findall(r"LIGHTNING-OK rank (\d) of 2", job.output)) == ["0", "1"], job.output[-3000:]
