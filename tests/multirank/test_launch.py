"""syncnorm-launch: launcher detection, command lines, exit codes, signals, timeouts, fatal errors.

Open MPI runs for real (the project's environment); MPICH runs for real through the `mpich` wheel
(tests/support/mpich_runtime.py, installed once into a cache); Intel MPI is not installable here, so
its command line is checked through `build_command` only.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from mpich_runtime import mpich_env, mpich_prefix
from syncnorm import launch
from syncnorm.launch import LaunchError, MPIInfo, build_command

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
OMPI = MPIInfo("openmpi", "Open MPI v5", "/x/mpirun")
MPICH = MPIInfo("mpich", "MPICH Version: 5", "/x/mpiexec")
IMPI = MPIInfo("intelmpi", "Intel(R) MPI Library 2021", "/x/mpiexec.hydra")

# Subject: the launcher (detection, command lines, exit codes, signals, timeouts); the jobs' ranks
# need not pay for numba's import and kernel loading (conftest.py _child_kernels).
pytestmark = pytest.mark.child_kernels("numpy")


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
        input_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `python -m syncnorm.launch ARGS` and capture its output."""
    full = dict(os.environ if env is None else env)
    full["PYTHONPATH"] = str(ROOT) + os.pathsep + full.get("PYTHONPATH", "")
    full.update(input_env or {})
    return subprocess.run([PY, "-m", "syncnorm.launch", *args], capture_output=True, text=True,
                          env=full, cwd=ROOT, timeout=timeout)


@pytest.fixture(scope="module")
def mpich():
    prefix, why = mpich_prefix()
    if prefix is None:
        pytest.skip(why)
    return prefix


def _leftovers(marker: str) -> list[int]:
    """Processes whose command line contains `marker` (a uuid put into the job's arguments)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        out.append(int(d))
            except OSError:
                pass
    return out


# ------------------------------------------------------------------------- command lines
def test_open_mpi_oversubscribes_one_host_only_when_ranks_exceed_cores():
    assert "--oversubscribe" in build_command(4, ["a"], OMPI, cores=2)
    assert "--oversubscribe" not in build_command(2, ["a"], OMPI, cores=2)
    # several hosts: never --oversubscribe (Open MPI 5 would then map every rank onto the first)
    line = build_command(4, ["a"], OMPI, hosts="h1:2,h2:2", cores=1)
    assert "--oversubscribe" not in line and line[line.index("--host") + 1] == "h1:2,h2:2"
    line = build_command(4, ["a"], OMPI, hostfile="/hf", cores=1)
    assert "--oversubscribe" not in line and line[line.index("--hostfile") + 1] == "/hf"


def test_open_mpi_timeout_tcp_agent_and_env_flags(monkeypatch):
    monkeypatch.setenv("SYNCNORM_COLLECTIVE_TIMEOUT", "7")
    line = build_command(2, ["python", "x.py"], OMPI, timeout=30.4, rsh_agent="/a/agent",
                         tcp="10.77.0.0/24", env_vars=["PYTHONPATH", "A=1"], cores=8)
    s = " ".join(line)
    assert "--timeout 30" in s and "--mca plm_rsh_agent /a/agent" in s
    assert ("--mca pml ob1 --mca btl tcp,self --mca btl_tcp_if_include 10.77.0.0/24 "
            "--mca oob_tcp_if_include 10.77.0.0/24") in s
    assert "-x SYNCNORM_COLLECTIVE_TIMEOUT" in s and "-x PYTHONPATH" in s and "-x A=1" in s
    assert line[-2:] == ["python", "x.py"] and line[:3] == ["/x/mpirun", "-n", "2"]


def test_hydra_command_lines_for_mpich_and_intel_mpi():
    line = build_command(4, ["a"], MPICH, hosts="h1:2,h2:2", rsh_agent="/ag", tcp="eth0",
                         env_vars=["B=2"], cores=1)
    s = " ".join(line)
    assert line[:3] == ["/x/mpiexec", "-n", "4"] and "-hosts h1:2,h2:2" in s
    assert "-launcher ssh -launcher-exec /ag" in s and "-iface eth0" in s
    assert "-genv UCX_TLS tcp,self" in s and "-genv MPIR_CVAR_NOLOCAL 1" in s and "-genv B 2" in s
    assert "--oversubscribe" not in s  # hydra oversubscribes without being asked
    s = " ".join(build_command(2, ["a"], IMPI, hostfile="/hf", tcp="ib0"))
    assert s.startswith("/x/mpiexec.hydra -n 2 -f /hf -iface ib0")
    assert "-genv FI_PROVIDER tcp" in s and "UCX_TLS" not in s
    with pytest.raises(LaunchError, match="interface name"):
        build_command(2, ["a"], MPICH, tcp="10.77.0.0/24")
    env = launch.job_env(MPICH, timeout=20)
    assert env["MPIEXEC_TIMEOUT"] == "20" and "OMPI_ALLOW_RUN_AS_ROOT" not in (
        set(env) - set(os.environ))


@pytest.mark.parametrize("kwargs, match", [
    (dict(nprocs=0, cmd=["a"]), "number of ranks"),
    (dict(nprocs=2, cmd=[]), "no command"),
    (dict(nprocs=5, cmd=["a"], hosts="h1:2,h2:2"), "offers 4 slots"),
    (dict(nprocs=2, cmd=["a"], hosts="h1:x"), "bad host entry"),
    (dict(nprocs=2, cmd=["a"], hosts="h1", hostfile="/hf"), "not both"),
    (dict(nprocs=2, cmd=["a"], env_vars=["1BAD"]), "NAME or NAME=VALUE"),
])
def test_bad_requests_say_what_is_wrong(kwargs, match):
    with pytest.raises(LaunchError, match=match):
        build_command(info=OMPI, **kwargs)


def test_dry_run_prints_the_open_mpi_command_with_root_flags():
    # SYNCNORM_* variables are passed on with -x (this module sets SYNCNORM_KERNELS): none here
    bare = {k: v for k, v in os.environ.items() if not k.startswith("SYNCNORM_")}
    r = cli("-n", "64", "--timeout", "30", "--dry-run", "--no-thread-limits", "--", "python", "-c",
            "pass", env=bare)
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip()
    assert f"{Path(PY).parent}/mpirun -n 64 --oversubscribe --timeout 30 python -c pass" in line
    if os.geteuid() == 0 and "OMPI_ALLOW_RUN_AS_ROOT" not in os.environ:
        assert line.startswith("OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 ")
    assert "Open MPI" in r.stderr and "(openmpi)" in r.stderr


# ------------------------------------------------------------------------- MPICH, for real
def test_detects_mpich_when_mpi4py_loads_it_and_finds_hydra_beside_it(mpich):
    r = cli("-n", "4", "--timeout", "20", "--dry-run", "--no-thread-limits", "--", "python", "x.py",
            env=mpich_env(mpich))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"MPIEXEC_TIMEOUT=20 {mpich}/bin/mpiexec -n 4 python x.py"
    assert "MPICH" in r.stderr and "(mpich)" in r.stderr


def test_mpich_job_runs_syncbatchnorm_check(mpich):
    r = cli("-n", "3", "--timeout", "120", "--", PY, "-m", "syncnorm.check",
            env=mpich_env(mpich), timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SyncBatchNorm on 3 rank(s)" in r.stdout and "MATCH" in r.stdout


def test_a_launcher_of_another_mpi_is_refused(mpich):
    # mpi4py loads Open MPI here; forcing MPICH's mpiexec must fail with both names in the message
    r = cli("-n", "2", "--launcher", str(mpich / "bin" / "mpiexec"), "--dry-run", "--", "x")
    assert r.returncode == 2
    assert "no launcher for Open MPI" in r.stderr and "belong to other MPIs" in r.stderr
    assert "(belongs to mpich)" in r.stderr


# ------------------------------------------------------------------------- running jobs
def test_the_jobs_exit_code_comes_back():
    r = cli("-n", "2", "--timeout", "60", "--", PY, "-c",
            "import sys; from mpi4py import MPI; sys.exit(3 if MPI.COMM_WORLD.rank == 1 else 0)")
    assert r.returncode == 3, r.stdout + r.stderr


def test_timeout_ends_a_hung_job_and_leaves_nothing_behind():
    marker = f"hang-{uuid.uuid4().hex}"
    t0 = time.monotonic()
    r = cli("-n", "2", "--timeout", "3", "--", PY, "-c",
            f"import time; from mpi4py import MPI; time.sleep(120)  # {marker}", timeout=90)
    took = time.monotonic() - t0
    assert r.returncode != 0, r.stdout + r.stderr
    assert _leftovers(marker) == []
    print(f"--timeout 3 on a hung 2-rank job: exit {r.returncode} after {took:.1f} s")


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_a_signal_is_forwarded_the_job_ends_and_the_launcher_says_so(sig, code):
    """SIGINT/SIGTERM to the launcher end the job (nothing left behind), and the launcher says it
    was interrupted, by which signal, and exits 128 + the signal's number (it used to exit 1,
    silently: the code of a --require-accuracy failure)."""
    marker = f"sig-{uuid.uuid4().hex}"
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [PY, "-m", "syncnorm.launch", "-n", "2", "--", PY, "-c",
         f"import time; from mpi4py import MPI; print('up', flush=True); time.sleep(120)  # {marker}"],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    try:
        assert proc.stdout is not None
        ups = 0
        deadline = time.monotonic() + 60
        while ups < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            ups += line.strip() == "up"
        assert ups == 2, "the ranks did not start"
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=40)
        assert proc.returncode == code, out
        name = signal.Signals(sig).name
        assert f"syncnorm-launch: the job was interrupted by {name} (exit {code})" in out, out
        for _ in range(40):
            if not _leftovers(marker):
                break
            time.sleep(0.1)
        assert _leftovers(marker) == []
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        for pid in _leftovers(marker):
            os.kill(pid, signal.SIGKILL)


def _same_pid_again(pid: int, line: list[str], env: dict[str, str]) -> subprocess.Popen | None:
    """Start `line` with process id `pid` (root: /proc/sys/kernel/ns_last_pid); None if the id
    could not be had (another process took it, or no permission)."""
    for _ in range(20):
        try:
            with open("/proc/sys/kernel/ns_last_pid", "w") as f:
                f.write(str(pid - 1))
        except OSError:
            return None
        proc = subprocess.Popen(line, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        if proc.pid == pid:
            return proc
        proc.communicate(timeout=60)
    return None


def test_a_killed_launcher_leaves_no_session_directory_to_stop_the_next_job(tmp_path, capfd):
    """Open MPI keeps a launcher's session files in $TMPDIR/ompi.PID and cannot remove them when the
    launcher is killed; process ids wrap, and a launcher that later gets the same id refuses to
    start ("The PMIx server's listener thread failed to start"). Here rank 0 stops the launcher
    (SIGSTOP: it can no longer clean up), `run` kills it at the timeout and must remove the
    directory; then a new launcher with the same process id must start and run."""
    info = launch.detect_mpi()
    if info.vendor != "openmpi":
        pytest.skip(f"Open MPI's session directories; this MPI is {info.vendor}")
    env = launch.job_env(info)
    env.update(TMPDIR=str(tmp_path), PYTHONPATH=str(ROOT))
    ppid = tmp_path / "launcher.pid"
    job = ("import os, signal, time\nfrom mpi4py import MPI\nMPI.COMM_WORLD.Barrier()\n"
           "if MPI.COMM_WORLD.rank == 0:\n"
           f"    open({str(ppid)!r}, 'w').write(str(os.getppid()))\n"
           "    os.kill(os.getppid(), signal.SIGSTOP)\n"
           "time.sleep(120)\n")
    line = launch.build_command(2, [PY, "-c", job], info)
    rc = launch.run(line, env, timeout=4, kill_grace=1, stderr=open(os.devnull, "wb"))
    assert rc == 124
    pid = int(ppid.read_text())
    err = capfd.readouterr().err
    assert f"removed the launcher's leftover session directory {tmp_path / f'ompi.{pid}'}" in err
    assert not [n for n in os.listdir(tmp_path) if n.startswith("ompi.")]

    again = _same_pid_again(pid, launch.build_command(2, [PY, "-c", "from mpi4py import MPI"],
                                                      info), env)
    if again is None:
        pytest.skip(f"could not start a launcher with process id {pid} again (needs root)")
    out, _ = again.communicate(timeout=60)
    assert again.returncode == 0, out


@pytest.mark.parametrize("runner", [["-m", "mpi4py"], []], ids=["python -m mpi4py", "plain python"])
def test_a_collective_timeout_prints_the_layer_and_ends_the_job(tmp_path, runner):
    """Rank 1 never reaches the SyncBatchNorm collective: rank 0 times out, prints the fatal line
    naming the layer and the group, and the job ends with exit 1. Under `python -m mpi4py` the
    exception aborts the job; a plain script would hang in MPI_Finalize at exit, and the watchdog's
    SIGALRM ends it: Open MPI then reports 142, which the launcher turns into 1 (the documented
    code of a fatal error) with a line saying so."""
    marker = f"late-{uuid.uuid4().hex}"
    job = tmp_path / "late.py"
    job.write_text(
        "import time, numpy as np\n"
        "from syncnorm import nn\n"
        "from syncnorm.distributed import get_world_group\n"
        f"MARK = '{marker}'\n"
        "w = get_world_group()\n"
        "m = nn.SyncBatchNorm(3, timeout=2)\n"
        "if w.rank == 1:\n"
        "    time.sleep(120)\n"
        "m(np.ones((2, 3, 4)))\n"
        "print('PAST THE COLLECTIVE', flush=True)\n")
    t0 = time.monotonic()
    r = cli("-n", "2", "--timeout", "60", "--abort-grace", "10", "--", PY, *runner, str(job),
            marker, input_env={"SYNCNORM_ABORT_GRACE": "2"}, timeout=120)
    took = time.monotonic() - t0
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "[syncnorm fatal] world rank 0" in out
    assert ("CollectiveTimeoutError: forward Allreduce of SyncBatchNorm #0 (3 channels) in "
            "ProcessGroup(world, ranks=[0, 1]) did not complete within 2 s") in out
    assert "PAST THE COLLECTIVE" not in out
    if not runner:  # rank 0 hung in MPI_Finalize at exit until the alarm ended it
        assert "signal 14 (Alarm clock)" in out, out
        assert ("syncnorm-launch: the job ended with status 142 after a rank reported a fatal "
                "error") in out, out
    assert _leftovers(marker) == []
    print(f"collective timeout 2 s ({' '.join(runner) or 'plain'}): exit {r.returncode} "
          f"after {took:.1f} s")


# ------------------------------------------------------------------------- the rank-side fail-safe
def _fatal_probe(grace: str, then: str) -> subprocess.CompletedProcess:
    code = ("import time\n"
            "from syncnorm.distributed.failsafe import report_fatal\n"
            "report_fatal('CollectiveTimeoutError: demo', 'world rank 0 on here')\n"
            f"{then}\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), SYNCNORM_ABORT_GRACE=grace)
    return subprocess.run([PY, "-c", code], env=env, capture_output=True, text=True, timeout=60)


def test_fatal_report_prints_the_marker_and_ends_a_stuck_process():
    t0 = time.monotonic()
    r = _fatal_probe("1", "time.sleep(45)")  # stuck in Python: faulthandler's timer ends it
    took = time.monotonic() - t0
    assert r.returncode != 0
    assert r.stderr.startswith("[syncnorm fatal] world rank 0 on here: CollectiveTimeoutError: demo"
                               " [this process ends in 1 s if it is still alive: "
                               "SYNCNORM_ABORT_GRACE]")
    assert "Timeout (0:00:01)!" in r.stderr  # faulthandler's dump says where it was stuck
    assert took < 40, "the watchdog did not end the process"


def test_fatal_report_watchdog_still_ends_a_process_stuck_at_exit():
    # stuck after its main code ended, in an exit handler: faulthandler's timer (exit 1) or the
    # alarm (SIGALRM) ends it. The case the alarm exists for, a hang inside mpi4py's MPI_Finalize
    # after Python has cancelled faulthandler's timer, is test_a_collective_timeout_prints_the_
    # layer_and_ends_the_job[plain python] (Open MPI reports 142 = 128 + SIGALRM; syncnorm-launch
    # exits 1).
    t0 = time.monotonic()
    r = _fatal_probe("1", "import atexit; atexit.register(time.sleep, 45)")
    assert r.returncode in (1, -14), (r.returncode, r.stderr)
    assert time.monotonic() - t0 < 40


def test_fatal_report_without_watchdog_lets_the_process_finish():
    r = _fatal_probe("off", "time.sleep(2.5); print('finished', flush=True)")
    assert r.returncode == 0 and "finished" in r.stdout
    assert "this process ends" not in r.stderr


@pytest.mark.parametrize("raw, want", [("", 10.0), ("2.5", 2.5), ("off", None), ("none", None)])
def test_abort_grace_values(monkeypatch, raw, want):
    from syncnorm.distributed.failsafe import abort_grace
    monkeypatch.setenv("SYNCNORM_ABORT_GRACE", raw)
    assert abort_grace() == want


@pytest.mark.parametrize("raw", ["soon", "0", "-1"])
def test_abort_grace_rejects_nonsense(monkeypatch, raw):
    from syncnorm.distributed.failsafe import abort_grace
    monkeypatch.setenv("SYNCNORM_ABORT_GRACE", raw)
    with pytest.raises(ValueError, match="SYNCNORM_ABORT_GRACE"):
        abort_grace()
