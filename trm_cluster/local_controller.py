"""The local executor's controller process: submitit's own, rerunning a requeued task without a cap.

submitit's ``python -m submitit.local._local`` runs ``Controller.run()`` with its default ``max_retry=6``:
a task that requeues a seventh time (exit code 144) is not rerun, and the run ends ``requeued`` where Slurm
would have requeued it again. This module is the same entry point with the cap out of reach. Everything
else is submitit's: the tasks it spawns, their logs, the USR2 before the time limit, SIGINT then SIGKILL at
it, and the job id (this process's pid). A task that exits with any other code is not rerun, as in
submitit; timeouts are bounded by the run's requeue budget in the manifest, preemptions are not (as on
Slurm).

Started by :class:`trm_cluster.executors.LocalExecutor` as ``python -m trm_cluster.local_controller
<submitit_folder>``; the other settings come from the environment, as submitit's controller reads them.
"""

from __future__ import annotations

import sys
from pathlib import Path

from submitit.local.local import Controller

UNLIMITED_RUNS = sys.maxsize
"""Runs of a task the controller allows: each rerun follows a requeue (exit code 144), never a crash."""


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m trm_cluster.local_controller <submitit_folder>")
    Controller(Path(args[0])).run(max_retry=UNLIMITED_RUNS)


if __name__ == "__main__":
    main()
