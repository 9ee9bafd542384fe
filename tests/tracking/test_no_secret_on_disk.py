"""The W&B API key is read from the environment by wandb alone: trm_cluster never writes it anywhere."""

from __future__ import annotations

from pathlib import Path

from support import cli, manifest

KEY = "trmleak" + "0123456789abcdef" * 2 + "zz"  # 41 characters, like a real key, and greppable


def _files_holding(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_api_key_in_the_environment_reaches_no_file(workdir: Path) -> None:
    home = workdir / "home"
    home.mkdir()
    env = {"WANDB_API_KEY": KEY, "HOME": str(home)}
    run_dir = workdir / "run"
    result = cli(
        "submit", "--preset", "regression", "--wandb-mode", "offline", "--executor", "local", "--wait",
        "--run-dir", str(run_dir), "--steps", "20", "--preemptions", "1", cwd=workdir, **env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert [s["end_reason"] for s in manifest(run_dir)["segments"]] == ["preempted", "completed"]
    dry = cli("submit", "--preset", "regression", "--executor", "slurm", "--dry-run", cwd=workdir, **env)
    assert dry.returncode == 0, dry.stderr

    assert list(run_dir.glob("wandb/*/run-*.wandb")), "W&B wrote nothing: the scan below would prove nothing"
    for text in (result.stdout, result.stderr, dry.stdout, dry.stderr):
        assert KEY not in text
    assert _files_holding(workdir, KEY.encode()) == []
    assert not (home / ".netrc").exists()  # no login, ever
