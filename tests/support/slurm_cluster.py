"""A one-node Slurm started by the tests themselves, on loopback only, stopped afterwards.

    with SlurmCluster() as sl:                        # munged, slurmctld, slurmd of our own
        r = sl.sbatch("launch/slurm-srun.sbatch", env=..., timeout=120)   # waits for the end
        print(r.output)                               # the job's output file

Everything lives in a temporary directory: slurm.conf (NodeAddr=127.0.0.1, free ports, state and
spool in the directory), a munge key and a munged socket of our own (`AuthInfo=socket=...`), so
the machine's /etc/slurm, /etc/munge and any Slurm or munge already running are left alone.
Clients find the cluster through SLURM_CONF. The daemons are started with `-D` as children of the
test process and killed by pid in `stop()`; any job still running is cancelled first.

Needs root and Debian's `slurm-wlm` (slurmctld, slurmd, sbatch, srun), `munge`, and for
`srun --mpi=pmix` `libpmix2` + `libpmix-dev` (the pmix plugin dlopens libpmix.so, which only the
-dev package provides). `SlurmCluster.unavailable()` says what is missing, for a skip.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

TOOLS = ("slurmctld", "slurmd", "sbatch", "srun", "sinfo", "scancel", "munged")


@dataclass
class JobResult:
    job_id: int
    state: str  # Slurm's JobState at the end: COMPLETED, FAILED, CANCELLED, TIMEOUT, ...
    returncode: int  # the batch script's exit code (-1 when unknown)
    output: str  # the job's output file
    seconds: float


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    def __init__(self, cpus: int | None = None) -> None:
        self.cpus = cpus or os.cpu_count() or 1
        self.node = socket.gethostname().split(".")[0]
        self.dir = Path(tempfile.mkdtemp(prefix="syncnorm-slurm-"))
        self.conf = self.dir / "slurm.conf"
        self.munge_socket = self.dir / "munge" / "munge.socket"
        self.procs: dict[str, subprocess.Popen] = {}

    @staticmethod
    def unavailable() -> str | None:
        if os.geteuid() != 0:
            return "the test Slurm runs its daemons as root"
        missing = [t for t in TOOLS if shutil.which(t) is None]
        if missing:
            return (f"Slurm is not installed ({', '.join(missing)} missing; "
                    "apt-get install slurm-wlm munge libpmix2 libpmix-dev)")
        return None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "SlurmCluster":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def env(self) -> dict[str, str]:
        """Environment for the Slurm clients (sbatch, srun, sinfo, ...)."""
        return dict(os.environ, SLURM_CONF=str(self.conf))

    def start(self, timeout: float = 60) -> None:
        for d in ("state", "spool", "log", "munge", "jobs"):
            (self.dir / d).mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir / "munge", 0o700)
        key = self.dir / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        self.procs["munged"] = subprocess.Popen(
            ["munged", "--foreground", "--force", f"--socket={self.munge_socket}",
             f"--key-file={key}", f"--pid-file={self.dir / 'munge' / 'munged.pid'}",
             f"--log-file={self.dir / 'log' / 'munged.log'}",
             f"--seed-file={self.dir / 'munge' / 'munged.seed'}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self._wait(lambda: self.munge_socket.exists(), timeout, "munged did not create its socket")
        self.conf.write_text(self._conf())
        log = open(self.dir / "log" / "daemons.out", "ab")
        self.procs["slurmctld"] = subprocess.Popen(["slurmctld", "-D", "-i", "-f", str(self.conf)],
                                                   stdout=log, stderr=subprocess.STDOUT,
                                                   env=self.env)
        self._wait(lambda: self._ok(["scontrol", "ping"], "UP"), timeout, "slurmctld did not come up")
        self.procs["slurmd"] = subprocess.Popen(["slurmd", "-D", "-N", self.node, "-f", str(self.conf)],
                                                stdout=log, stderr=subprocess.STDOUT, env=self.env)
        self._wait(lambda: self._ok(["sinfo", "-h", "-o", "%t"], "idle"), timeout,
                   "the node did not become idle")

    def stop(self) -> None:
        """Cancel jobs, kill the daemons (by pid) and anything left of the jobs; remove files."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--full", "--user=root"], env=self.env,
                           capture_output=True, timeout=30, check=False)
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.get(name)
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=10)
        self._kill_job_leftovers()
        self.procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _kill_job_leftovers(self) -> None:
        """slurmstepd processes and job tasks of this cluster (their environment names our conf)."""
        mine = f"SLURM_CONF={self.conf}".encode()
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == os.getpid():
                continue
            try:
                with open(f"/proc/{d}/environ", "rb") as f:
                    env = f.read()
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            if mine in env.split(b"\0") or (b"slurmstepd" in cmd and str(self.dir).encode() in cmd):
                try:
                    os.kill(int(d), signal.SIGKILL)
                except ProcessLookupError:
                    pass

    # ------------------------------------------------------------------ jobs
    def sbatch(self, script: str | os.PathLike, args: list[str] | None = None,
               env: dict[str, str] | None = None, timeout: float = 180,
               cwd: str | os.PathLike | None = None, extra: list[str] | None = None) -> JobResult:
        """Submit the script with sbatch (its own #SBATCH lines apply; `extra` adds options) and
        wait for the job to end (polling scontrol); it is cancelled if it has not ended after
        `timeout` s. Returns the job's state, exit code and output file."""
        out = self.dir / "jobs" / "job-%j.out"
        full_env = dict(env if env is not None else os.environ)
        full_env["SLURM_CONF"] = str(self.conf)
        t0 = time.monotonic()
        r = subprocess.run(["sbatch", "--parsable", f"--output={out}", *(extra or []), str(script),
                            *(args or [])], env=full_env, cwd=cwd, capture_output=True, text=True,
                           timeout=60)
        m = re.search(r"^(\d+)", r.stdout.strip())
        if r.returncode != 0 or not m:
            raise RuntimeError(f"sbatch failed (rc={r.returncode}): {r.stdout}\n{r.stderr}")
        job = int(m[1])
        state, code, note = "UNKNOWN", -1, ""
        while True:
            info = subprocess.run(["scontrol", "-o", "show", "job", str(job)], env=self.env,
                                  capture_output=True, text=True, timeout=30).stdout
            st = re.search(r"JobState=(\S+)", info)
            ec = re.search(r"ExitCode=(\d+):(\d+)", info)
            state = st[1] if st else "UNKNOWN"
            if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
                         "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE"):
                code = int(ec[1]) if ec else -1
                break
            if time.monotonic() - t0 > timeout:
                subprocess.run(["scancel", str(job)], env=self.env, capture_output=True, timeout=30)
                note = f"\n[slurm_cluster] job {job} cancelled after {timeout:g} s (state {state})"
                state = "CANCELLED"
                time.sleep(1)
                break
            time.sleep(0.2)
        seconds = time.monotonic() - t0
        path = self.dir / "jobs" / f"job-{job}.out"
        text = path.read_text(errors="replace") if path.exists() else ""
        return JobResult(job, state, code, text + note, seconds)

    def srun(self, args: list[str], env: dict[str, str] | None = None, timeout: float = 120,
             cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
        """`srun ARGS` (a job of its own), bounded; output captured."""
        full_env = dict(env if env is not None else os.environ)
        full_env["SLURM_CONF"] = str(self.conf)
        return subprocess.run(["srun", *args], env=full_env, cwd=cwd, capture_output=True,
                              text=True, timeout=timeout)

    # ------------------------------------------------------------------ helpers
    def _conf(self) -> str:
        d = self.dir
        return f"""# written by tests/support/slurm_cluster.py: one node on loopback, files under {d}
ClusterName=syncnormtest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CredType=cred/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} Sockets=1 CoresPerSocket={self.cpus} ThreadsPerCore=1 RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=10 State=UP OverSubscribe=FORCE:4
"""

    def _ok(self, cmd: list[str], want: str) -> bool:
        try:
            r = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=10)
        except subprocess.TimeoutExpired:
            return False
        return want in r.stdout

    def _wait(self, pred, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited with {p.returncode}: {self._logs()}")
            if pred():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{what} within {timeout:g} s: {self._logs()}")

    def _logs(self) -> str:
        out = []
        for f in sorted((self.dir / "log").glob("*")):
            out.append(f"== {f.name}\n{f.read_text(errors='replace')[-3000:]}")
        return "\n".join(out)
