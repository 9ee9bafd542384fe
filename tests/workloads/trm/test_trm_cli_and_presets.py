"""The evaluation CLI on a hand-made checkpoint, the presets, and the import boundary."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch
from support import REPO
from trm_testing import build, small_config

from trm_cluster.core.workload import load_workload
from trm_cluster.launch.presets import load_preset
from trm_cluster.workloads.trm import PEPTIDE_TRM, TRMConfig
from trm_cluster.workloads.trm.evaluate import main

PACKAGE = REPO / "trm_cluster" / "workloads" / "trm"


def _checkpoint(tmp_path: Path) -> Path:
    config = small_config("default", horizon=10)
    trainer = build(config)
    for step in range(3):
        trainer.train_step(step)
    state = trainer.state_dict()
    checkpoint = {
        "model": state["model"],
        "trainer": state,
        "meta": {"config": {"job": dataclasses.asdict(config), "run": {"steps": 3, "seed": 0}}, "step": 3},
    }
    path = tmp_path / "step-3.pt"
    torch.save(checkpoint, path)
    return path


def test_evaluate_cli_on_mgf(tmp_path: Path, mgf_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _checkpoint(tmp_path)
    main(["--checkpoint", str(path), "--mgf", str(mgf_path), "--show", "2"])
    out = capsys.readouterr().out
    for name in ("aa_precision", "aa_recall", "peptide_recall", "spectra_skipped"):
        assert name in out
    assert "spectra_read: 128" in out.replace("  ", "")
    assert out.count("target ") == 2


def test_evaluate_cli_synthetic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _checkpoint(tmp_path)
    main(["--checkpoint", str(path), "--raw-weights"])
    assert "aa_recall" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["tiny", "gpu", "delayed-spectrum", "mid"])
def test_presets_resolve(name: str) -> None:
    preset = load_preset(name)
    workload = load_workload(preset.workload)
    assert workload is PEPTIDE_TRM
    config = workload.config_from_dict(preset.job)
    assert isinstance(config, TRMConfig)
    config.validate()
    assert preset.run["steps"] > 0


def test_delayed_spectrum_preset_changes_only_the_curriculum() -> None:
    tiny = PEPTIDE_TRM.config_from_dict(load_preset("tiny").job)
    delayed = PEPTIDE_TRM.config_from_dict(load_preset("delayed-spectrum").job)
    changed = [
        f.name for f in dataclasses.fields(TRMConfig) if getattr(tiny, f.name) != getattr(delayed, f.name)
    ]
    assert changed == ["curriculum"]  # the core reports curriculum_modified: true
    assert delayed.curriculum.name == "delayed-spectrum"


def test_gpu_preset_is_paper_scale() -> None:
    config = PEPTIDE_TRM.config_from_dict(load_preset("gpu").job)
    assert (config.hidden, config.n_latent, config.t_recursions, config.n_sup) == (512, 6, 3, 16)
    assert (config.batch_size, config.lr, config.warmup_steps) == (768, 1e-4, 2000)
    assert (config.beta1, config.beta2, config.ema_decay, config.bf16) == (0.9, 0.95, 0.999, True)


def test_package_imports_nothing_it_must_not() -> None:
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                root = name.split(".")[0]
                assert root not in {"submitit", "wandb", "slurm"}, (path.name, name)
                if root == "trm_cluster":
                    assert name == "trm_cluster.core.workload" or name.startswith(
                        "trm_cluster.workloads.trm"
                    ), (
                        path.name,
                        name,
                    )
