"""``session(config=..., tags=...)``: the script's own config and tags reach the one W&B run (read back from
its ``.wandb`` files) and the manifest; a resume whose script config differs records each change and
gives W&B the new value. Bad input: one line, exit 2, nothing on disk touched."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from support import clean_env, manifest, wandb_history

SCRIPT = """
import argparse, dataclasses, torch, trm_cluster

@dataclasses.dataclass
class TrainingConfig:
    lr: float
    batch_size: int = 8
    data: str = "spectra.mgf"

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=1e-3)
config = TrainingConfig(lr=parser.parse_args().lr)
model = torch.nn.Linear(2, 2)
with trm_cluster.session(config=config, tags=["peptide", "trm"], steps=6, log_every=1) as run:
    run.restore(model=model)
    for step in run.steps():
        run.log({"loss": float(step)})
"""


def _run(script: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script), *args], cwd=script.parent, env=env, capture_output=True, text=True
    )


def test_the_scripts_config_and_tags_reach_the_one_wandb_run_and_a_changed_value_is_recorded(
    workdir: Path,
) -> None:
    script = workdir / "train.py"
    script.write_text(SCRIPT)
    run_dir = workdir / "run"
    env = clean_env(TRM_CLUSTER_RUN_DIR=str(run_dir), WANDB_MODE="offline", TRM_CLUSTER_STOP_AFTER="3")
    first = _run(script, env)
    assert first.returncode == 75, first.stdout + first.stderr
    del env["TRM_CLUSTER_STOP_AFTER"]
    second = _run(script, env, "--lr", "0.0005")
    assert second.returncode == 0, second.stdout + second.stderr

    data = manifest(run_dir)
    assert data["script_config"] == {"lr": 0.0005, "batch_size": 8, "data": "spectra.mgf"}
    assert data["wandb"]["tags"] == ["peptide", "trm"]
    [change] = data["config_changes"]
    assert change["at_step"] == 3 and change["changes"] == {"script.lr": [0.001, 0.0005]}

    first_segment, second_segment = wandb_history(run_dir)
    assert first_segment.config["lr"] == 0.001 and first_segment.config["batch_size"] == 8
    assert first_segment.config["script"]["path"].endswith("train.py")  # the package's settings beside
    assert second_segment.config["lr"] == 0.0005
    assert second_segment.config["lr_modified"] is True
    assert "script.lr: 0.001 -> 0.0005 at step 3" in second_segment.config["lr_change"]
    assert set(first_segment.tags) == set(second_segment.tags) == {"peptide", "trm"}


def test_a_config_that_names_the_packages_settings_is_refused_in_one_line(workdir: Path) -> None:
    script = workdir / "train.py"
    script.write_text(SCRIPT.replace("config=config", "config={'run': 1}"))
    run_dir = workdir / "run"
    refused = _run(script, clean_env(TRM_CLUSTER_RUN_DIR=str(run_dir), WANDB_MODE="offline"))
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "session(config=...): the key 'run' is taken by the package's own settings" in refused.stderr
    assert not run_dir.exists()


def test_a_string_given_as_tags_is_refused(workdir: Path) -> None:
    script = workdir / "train.py"
    script.write_text(SCRIPT.replace('tags=["peptide", "trm"]', 'tags="peptide"'))
    run_dir = workdir / "run"
    refused = _run(script, clean_env(TRM_CLUSTER_RUN_DIR=str(run_dir), WANDB_MODE="offline"))
    assert refused.returncode == 2 and "session(tags=...) takes a list of strings" in refused.stderr
    assert not run_dir.exists()
