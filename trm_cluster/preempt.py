"""``python -m trm_cluster.preempt RUN_DIR``: send the run's current process a real preemption signal.

Local runs: the task process recorded in the manifest's open segment (not submitit's controller:
``LocalJob._interrupt`` signals the controller, which dies and orphans the task). Slurm runs:
``scancel --signal=USR2 JOBID``, which reaches the srun tasks, not the batch shell.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import tyro

from trm_cluster.core.process_exit import skip_final_collections
from trm_cluster.core.signals import preempt_signal
from trm_cluster.rundir.manifest import ManifestError, RunManifest


@dataclass
class PreemptArgs:
    """Rehearse a preemption: the run saves at its next step boundary and requeues itself."""

    run_dir: tyro.conf.Positional[Path]
    term: bool = False
    """Send SIGTERM (a preemption without warning, or the time-limit kill) instead of USR2."""


def preempt(run_dir: Path, term: bool = False) -> str:
    data = RunManifest(run_dir).read()
    segment = data.open_segment
    if segment is None:
        raise ManifestError(f"run {data.name} has no running process (status {data.status})")
    signum = signal.SIGTERM if term else preempt_signal()
    if segment.executor == "slurm":
        name = signum.name.removeprefix("SIG")
        subprocess.run(["scancel", f"--signal={name}", segment.job_id], check=True, timeout=30)
        return f"sent {signum.name} to Slurm job {segment.job_id}"
    if segment.host != socket.gethostname():
        raise ManifestError(f"the run's process {segment.pid} runs on {segment.host}, not on this machine")
    try:
        os.kill(segment.pid, signum)
    except ProcessLookupError:
        raise ManifestError(f"process {segment.pid} of segment {segment.index} is gone") from None
    return f"sent {signum.name} to pid {segment.pid} (segment {segment.index}, step >= {segment.start_step})"


def main(argv: list[str] | None = None) -> int:
    skip_final_collections()
    args = tyro.cli(PreemptArgs, args=argv, prog="python -m trm_cluster.preempt")
    try:
        print(preempt(args.run_dir, args.term))
    except (ManifestError, subprocess.SubprocessError, OSError) as error:
        print(f"trm-preempt: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
