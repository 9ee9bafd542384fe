"""Our processes freeze what is alive as their last exit hook, so the interpreter's final collections skip
it (core/process_exit.py): after every hook registered later (W&B's, the session's), and in every command
and job process."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from support import REPO, clean_env

from trm_cluster.core import process_exit
from trm_cluster.rundir.manifest import ManifestError
from trm_cluster.scheduler.job import TrainingJob

PROBE = """
import atexit, gc
atexit.register(lambda: print("after:", gc.get_freeze_count() > 0, flush=True))  # runs last of the three
from trm_cluster.core.process_exit import skip_final_collections
skip_final_collections()
atexit.register(lambda: print("before:", gc.get_freeze_count() > 0, flush=True))  # a later hook: runs first
"""


def test_the_freeze_runs_at_exit_after_the_hooks_registered_later() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["before:", "False", "after:", "True"]


@pytest.mark.parametrize(
    "entry",
    [
        "trm_cluster.submit:main", "trm_cluster.status:main", "trm_cluster.sync:main",
        "trm_cluster.preempt:main", "trm_cluster.chaos.driver:main", "trm_cluster.doctor.cli:main",
    ],
)  # fmt: skip
def test_every_command_registers_it(entry: str, monkeypatch: pytest.MonkeyPatch) -> None:
    module, name = entry.split(":")
    main = getattr(importlib.import_module(module), name)
    monkeypatch.setattr(process_exit, "_registered", False)
    with pytest.raises(SystemExit):
        main(["--help"])
    assert process_exit._registered


def test_a_job_process_registers_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process_exit, "_registered", False)
    with pytest.raises(ManifestError, match="holds no run"):  # it refuses, the hook already in
        TrainingJob(tmp_path / "no-run")()
    assert process_exit._registered
