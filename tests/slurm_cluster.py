"""A real one-node SLURM on localhost for the `slurm` tests: munged + slurmctld + slurmd in a temp dir.

    cluster = LocalSlurm(tmp_dir)
    reason = cluster.start()          # None when idle and ready, else why not (the tests skip with it)
    env = cluster.env                 # SLURM_CONF=...: pass to every client (sbatch, squeue, python -m runner)
    cluster.stop()                    # each daemon by the PID it wrote; never by name

Debian's packages (slurmctld slurmd slurm-client munge) are installed with apt-get when missing and we are
root. No slurmdbd: submitit works without sacct (it warns "Bypassing sacct error" and reads its own
result files). Ports are picked free at start, so two clusters on one machine do not collide.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
BINARIES = ["slurmctld", "slurmd", "munged", "sbatch", "squeue", "scontrol", "sinfo", "scancel"]


def _which(name: str) -> str | None:
    return shutil.which(name) or next((p for d in ("/usr/sbin", "/sbin") if os.access(p := f"{d}/{name}", os.X_OK)),
                                      None)


def install() -> str | None:
    """Install the packages if a binary is missing. Returns None when all are there, else the reason."""
    if all(_which(b) for b in BINARIES):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "SLURM is not installed and cannot be (needs root and apt-get)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:  # stale package lists: update once and retry
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0 or not all(_which(b) for b in BINARIES):
        return f"apt-get install {' '.join(PACKAGES)} failed: {(out.stderr or out.stdout).strip()[-300:]}"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalSlurm:
    def __init__(self, root: Path, cpus: int = 2, partition: str = "debug"):
        self.root = Path(root)
        self.cpus = cpus
        self.partition = partition
        self.host = socket.gethostname()
        self.conf = self.root / "slurm.conf"
        self.munge_dir = self.root / "munge"
        self.pid_files = {"slurmd": self.root / "slurmd.pid", "slurmctld": self.root / "slurmctld.pid",
                          "munged": self.munge_dir / "munged.pid"}
        self.env = {"SLURM_CONF": str(self.conf)}

    # ---- start -------------------------------------------------------------------------------------
    def start(self, timeout: float = 60) -> str | None:
        reason = install()
        if reason:
            return reason
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            self._start_munge()
            self._write_conf()
            for daemon in ("slurmctld", "slurmd"):
                out = subprocess.run([_which(daemon), "-f", str(self.conf)], env={**os.environ, **self.env},
                                     capture_output=True, text=True, timeout=30)
                if out.returncode != 0:
                    return f"{daemon} did not start: {out.stderr.strip()[-300:]} (log: {self.root})"
            deadline = time.time() + timeout
            state = ""
            while time.time() < deadline:
                state = self.run("sinfo", "-h", "-o", "%T").stdout.strip()
                if state == "idle":
                    return None
                time.sleep(0.5)
            return f"the SLURM node is not idle after {timeout:.0f} s (state {state!r}; logs in {self.root})"
        except (OSError, subprocess.SubprocessError, KeyError) as e:
            return f"could not start SLURM: {type(e).__name__}: {e}"

    def _start_munge(self) -> None:
        munge = pwd.getpwnam("munge")
        self.munge_dir.mkdir(mode=0o755, exist_ok=True)
        os.chown(self.munge_dir, munge.pw_uid, munge.pw_gid)
        self.root.chmod(0o755)
        cmd = [_which("munged"), f"--socket={self.munge_dir}/munge.sock", f"--pid-file={self.pid_files['munged']}",
               f"--log-file={self.munge_dir}/munged.log", f"--seed-file={self.munge_dir}/munged.seed"]
        subprocess.run(cmd, user=munge.pw_uid, group=munge.pw_gid, check=True, capture_output=True, timeout=30)
        for _ in range(100):
            if (self.munge_dir / "munge.sock").exists():
                return
            time.sleep(0.05)
        raise OSError(f"munged did not create its socket in {self.munge_dir}")

    def _write_conf(self) -> None:
        r = self.root
        for d in ("state", "spool"):
            (r / d).mkdir(exist_ok=True)
        self.conf.write_text(f"""\
ClusterName=plmtest
SlurmctldHost={self.host}(127.0.0.1)
SlurmUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={self.munge_dir}/munge.sock
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
KillWait=5
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={self.pid_files['slurmctld']}
SlurmdPidFile={self.pid_files['slurmd']}
SlurmctldLogFile={r}/slurmctld.log
SlurmdLogFile={r}/slurmd.log
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory=4000 State=UNKNOWN
PartitionName={self.partition} Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
""")

    # ---- use ---------------------------------------------------------------------------------------
    def run(self, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """A SLURM client command (squeue, scontrol, scancel, ...) against this cluster."""
        return subprocess.run([_which(cmd[0]), *cmd[1:]], env={**os.environ, **self.env}, capture_output=True,
                              text=True, timeout=timeout)

    def jobs(self) -> list[str]:
        """`<job id> <state>` of every job the controller still knows."""
        return self.run("squeue", "-h", "-o", "%i %T").stdout.split("\n")[:-1]

    # ---- stop --------------------------------------------------------------------------------------
    def stop(self, timeout: float = 15) -> None:
        """Stop slurmd, slurmctld and munged by the PIDs in their pid files (SIGTERM, then SIGKILL)."""
        if self.pid_files["slurmctld"].exists():  # this cluster's jobs first, so no job process outlives it
            try:
                self.run("scancel", "--user", "root", timeout=10)
                deadline = time.time() + timeout
                while self.jobs() and time.time() < deadline:
                    time.sleep(0.2)
            except (OSError, subprocess.SubprocessError):
                pass
        for name in ("slurmd", "slurmctld", "munged"):
            path = self.pid_files[name]
            try:
                pid = int(path.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.time() + timeout
            while time.time() < deadline and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (daemons are not our children, but be safe) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
