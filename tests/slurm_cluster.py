"""A real one-node Slurm for the tests: munged, slurmctld and slurmd from Debian's `munge` and `slurm-wlm` packages,
started as root with their config, key, state and spool under a temporary folder (nothing in /etc is touched), and
stopped at the end. Accounting is off (no slurmdbd): the launcher reads queue states from squeue and what a job did
from its run's results.json (kd_lightning/ablations/slurm.py). `SLURM_CONF` is exported to the session, so sbatch,
squeue and submitit in the tests and in their subprocesses talk to this Slurm.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue")


def _conf(base: Path, node: str, port: int) -> str:
    # MinJobAge: finished jobs stay visible to scontrol for the tests' start-time checks.
    return f"""ClusterName=kdtest
SlurmctldHost={socket.gethostname().split('.')[0]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={base / 'munge.socket'}
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
StateSaveLocation={base / 'state'}
SlurmdSpoolDir={base / 'spool'}
SlurmctldPidFile={base / 'slurmctld.pid'}
SlurmdPidFile={base / 'slurmd.pid'}
SlurmctldLogFile={base / 'slurmctld.log'}
SlurmdLogFile={base / 'slurmd.log'}
SlurmctldPort={port}
SlurmdPort={port + 1}
ReturnToService=2
MinJobAge=3600
KillWait=30
{node} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def start(base: Path, port: int = 16817) -> dict[str, str]:
    """Start the three daemons (slurmctld on `port`, slurmd on port + 1); returns the environment variables that point Slurm's commands at them."""
    for name in ("state", "spool"):
        (base / name).mkdir(parents=True, exist_ok=True)
    key = base / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    subprocess.run(["munged", "-f", f"--key-file={key}", f"--socket={base / 'munge.socket'}",
                    f"--pid-file={base / 'munged.pid'}", f"--log-file={base / 'munged.log'}",
                    f"--seed-file={base / 'munge.seed'}"], check=True)
    node = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    conf = base / "slurm.conf"
    conf.write_text(_conf(base, node, port))
    env = {"SLURM_CONF": str(conf)}
    full = {**os.environ, **env}
    subprocess.run(["slurmctld", "-i"], env=full, check=True)
    subprocess.run(["slurmd"], env=full, check=True)
    deadline = time.time() + 30
    while time.time() < deadline:
        info = subprocess.run(["sinfo", "-h", "-o", "%t"], env=full, capture_output=True, text=True)
        if info.returncode == 0 and info.stdout.strip() in ("idle", "mix", "alloc"):
            return env
        time.sleep(0.5)
    stop(base)
    raise RuntimeError(f"Slurm did not come up in 30 s; see {base}/slurmctld.log and slurmd.log")


def stop(base: Path) -> None:
    for name in ("slurmd", "slurmctld", "munged"):
        pid_file = base / f"{name}.pid"
        try:
            os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
        except (OSError, ValueError):
            pass


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A running one-node Slurm (2 CPUs here: jobs of 1 CPU run two at a time); skips where it cannot be had."""
    missing = [name for name in DAEMONS if shutil.which(name) is None]
    if missing:
        pytest.skip(f"no Slurm here ({', '.join(missing)} missing): `apt-get install -y slurm-wlm munge` (as root)")
    if os.geteuid() != 0:
        pytest.skip("the test Slurm runs its daemons as root (SlurmUser=root); run the Slurm tests as root")
    # A short folder: munge's socket path must fit in a Unix socket name (108 bytes).
    base = Path(tmp_path_factory.mktemp("slurm"))
    env = start(base)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield base
    finally:
        subprocess.run(["scancel", "--user=root"], capture_output=True)
        stop(base)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
