"""The script doorway: a researcher's own ``train.py`` (or ``module:function``) run as a requeueable job.

The script runs in the job's process as ``python train.py ARGS`` would run it (``__main__``, its
directory first on ``sys.path``, its own arguments in ``sys.argv``, the submission's working
directory), and opens ``trm_cluster.session()`` around its loop; that call picks up this process's
run. A stop raises :class:`~trm_cluster.runtime.plan.SegmentEnded` out of the loop, through the script,
to :class:`SegmentedJob`, which requeues: the script's code after the loop does not run.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import runpy
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trm_cluster.core.errors import UsageError
from trm_cluster.core.workload import TrainContext, Trainer, Workload
from trm_cluster.rundir.manifest import RunManifest
from trm_cluster.rundir.segments import fail_segment, open_segment
from trm_cluster.runtime.plan import SessionPlan, serving
from trm_cluster.scheduler.job import SegmentedJob


class ScriptFailed(RuntimeError):
    """The script exited with a non-zero status."""


@dataclass
class NoJobConfig:
    """A script has no workload config: its own arguments are recorded under ``script.args``."""


def _no_trainer(config: NoJobConfig, context: TrainContext) -> Trainer:
    raise UsageError("a script run has no Trainer: it is run by ScriptJob")


SCRIPT = Workload(name="script", config_type=NoJobConfig, build=_no_trainer)


class ScriptJob(SegmentedJob):
    def run_segment(self, plan: SessionPlan) -> dict[str, Any]:
        data = RunManifest(plan.run_dir).read()
        script = data.config["script"]
        try:
            with serving(plan), _as_main(script, Path(data.launch.get("cwd") or os.getcwd())):
                try:
                    _run(script)
                except SystemExit as exit:
                    if exit.code not in (0, None):
                        raise ScriptFailed(f"the script exited with status {exit.code}") from None
            if not plan.used:
                raise UsageError(
                    "the script never opened trm_cluster.session(): wrap its loop in "
                    "`with trm_cluster.session() as run:` (docs/your-own-loop.md)"
                )
        except Exception as error:
            if not plan.used:  # no session recorded it: the run would still say "running"
                _record_failed_start(plan, error)
            raise
        return plan.summary


def _record_failed_start(plan: SessionPlan, error: BaseException) -> None:
    """A segment, opened and closed as failed with the error's last lines, for a script that failed
    before it opened its session (an import, its own set-up, a missing key): ``status`` and
    ``submit --wait`` then say why, and the failure is not retried (it happened before training)."""
    if not plan.context.is_rank_zero:
        return
    manifest = RunManifest(plan.run_dir)
    segment = open_segment(manifest, plan.context)
    fail_segment(manifest, segment.index, "failed", error)


def _run(script: Mapping[str, Any]) -> None:
    if script.get("entry"):
        module, _, function = str(script["entry"]).partition(":")
        getattr(importlib.import_module(module), function)()
    else:
        runpy.run_path(str(script["path"]), run_name="__main__")


@contextlib.contextmanager
def _as_main(script: Mapping[str, Any], cwd: Path) -> Iterator[None]:
    """``sys.argv``, ``sys.path[0]`` and the working directory as ``python script ARGS`` would set them;
    put back afterwards (the debug executor runs the next segment in this same process)."""
    argv, path, old_cwd = list(sys.argv), list(sys.path), os.getcwd()
    program = str(script["path"] or str(script["entry"]).partition(":")[0])
    sys.argv = [program, *script.get("args", [])]
    if script.get("path"):
        sys.path.insert(0, str(Path(script["path"]).parent))
    os.chdir(cwd)
    try:
        yield
    finally:
        sys.argv, sys.path[:] = argv, path
        os.chdir(old_cwd)
