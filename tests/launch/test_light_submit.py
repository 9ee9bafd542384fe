"""``submit`` (and every other command) runs without importing torch: only the job's process pays for it.

Why it matters: importing torch took ~1.1 s of CPU on a quiet machine (1.9 s loaded), and a process
that has it spends more at its exit; ``submit`` only writes the manifest, pickles the job and hands it to
the scheduler. The guard here makes ``import torch`` raise in the command's own process, so a
module-level torch import that creeps back onto the path fails by name.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from support import clean_env, manifest, status_json

from trm_cluster.core.digest import weights_sha256
from trm_cluster.rundir.manifest import RunManifest

BLOCK_TORCH = textwrap.dedent(
    """
    import runpy, sys

    class NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "numpy"):
                raise ImportError(f"{name} imported by the command's own process")
            return None

    sys.meta_path.insert(0, NoTorch())
    module, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    """
)


def run_without_torch(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH, module, *args],
        cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.fixture(scope="module")
def light_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A whole local run, submitted and waited for by a process that cannot import torch; the job's
    process (the executor's child) imports it and trains to the end."""
    workdir = tmp_path_factory.mktemp("light")
    run_dir = workdir / "run"
    args = ("--preset", "regression", "--executor", "local", "--no-wandb", "--steps", "3", "--wait")
    done = run_without_torch("trm_cluster.submit", *args, "--run-dir", str(run_dir), cwd=workdir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "run completed at step 3/3" in done.stdout, done.stdout + done.stderr
    return run_dir


def test_submit_hands_a_run_to_the_local_executor_without_importing_torch(light_run: Path) -> None:
    assert manifest(light_run)["status"] == "completed"


def test_status_shows_the_final_weights_digest_without_loading_a_checkpoint(
    light_run: Path, tmp_path: Path
) -> None:
    """The digest is recorded with the final checkpoint: ``status`` (torch unimportable) shows the digest
    of the weights in that file. A run still training shows none rather than reading its checkpoint; a
    run completed before the digest was recorded still gets it, from the file."""
    final = manifest(light_run)["checkpoints"][-1]
    expected = weights_sha256(torch.load(light_run / final["file"], weights_only=True)["model"])
    shown = run_without_torch("trm_cluster.status", str(light_run), "--json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert json.loads(shown.stdout)["weights_sha256"] == expected

    older = tmp_path / "older"
    shutil.copytree(light_run, older)
    with RunManifest(older).update() as data:
        data.checkpoints[-1].weights_sha256 = None
    assert status_json(older, tmp_path)["weights_sha256"] == expected  # from the file
    with RunManifest(older).update() as data:
        data.status = "running"
    shown = run_without_torch("trm_cluster.status", str(older), "--json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert json.loads(shown.stdout)["weights_sha256"] is None


def test_the_trm_preset_and_every_command_parse_without_torch(tmp_path: Path) -> None:
    """The peptide-trm workload's config (curriculum, data settings) is read without its trainer, and the
    commands that only read a run (status, sync, preempt) never needed torch; the doctor imports it beside
    its runs. (chaos compares the tensors itself, in its own process: it imports torch.)"""
    dry = run_without_torch(
        "trm_cluster.submit", "--preset", "tiny", "--executor", "slurm", "--dry-run",
        "--run-dir", str(tmp_path / "tiny"), cwd=tmp_path,
    )  # fmt: skip
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "submitit.core._submit" in dry.stdout, dry.stdout
    for command in ("status", "sync", "preempt", "doctor"):
        shown = run_without_torch(f"trm_cluster.{command}", "--help", cwd=tmp_path)
        assert shown.returncode == 0, f"{command}: {shown.stdout}{shown.stderr}"
