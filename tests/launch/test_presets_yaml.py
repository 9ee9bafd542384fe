"""YAML presets: the schema, semantics and errors of the TOML ones, on files written here."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import yaml
from support import cli, tree_digest

from trm_cluster.launch.presets import PresetError, load_preset, preset_directories


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_yaml_copy_of_tiny_resolves_to_the_same_preset(tmp_path: Path) -> None:
    tiny = tomllib.loads((preset_directories()[0] / "tiny.toml").read_text())
    copy = write(tmp_path / "tiny.yaml", yaml.safe_dump(tiny))
    assert load_preset(str(copy)) == load_preset("tiny")


@pytest.mark.parametrize("value", ["1e-4", "1.0E4", "-2e+3", "0.5", "7", "true", '"1e-4"', "[1, 2]"])
def test_yaml_values_are_typed_as_in_toml(tmp_path: Path, value: str) -> None:
    toml = load_preset(str(write(tmp_path / "p.toml", f'workload = "m:W"\n[job]\nx = {value}\n')))
    yml = load_preset(str(write(tmp_path / "p.yaml", f"workload: m:W\njob:\n  x: {value}\n")))
    assert yml.job == toml.job and type(yml.job["x"]) is type(toml.job["x"])


def test_extends_crosses_formats_by_name_and_by_path(tmp_path: Path) -> None:
    write(tmp_path / "base.toml", 'workload = "m:W"\n[run]\nsteps = 10\nseed = 1\n[job.c]\nx = 1\ny = 2\n')
    mid = write(tmp_path / "mid.yaml", "extends: base\nrun:\n  steps: 20\njob:\n  c:\n    y: 3\n")
    write(tmp_path / "top.yml", f"extends: {mid}\ndescription: top\n")
    write(tmp_path / "back.toml", 'extends = "mid"\n[job]\nz = 4\n')
    dirs = [tmp_path]
    assert load_preset("top", dirs) == load_preset(str(tmp_path / "top.yml"), dirs)
    top = load_preset("top", dirs)
    assert (top.name, top.workload, top.description) == ("top", "m:W", "top")
    assert top.run == {"steps": 20, "seed": 1} and top.job == {"c": {"x": 1, "y": 3}}
    assert load_preset("back", dirs).job == {"c": {"x": 1, "y": 3}, "z": 4}


def test_a_name_finds_yaml_and_two_files_for_one_name_are_refused(tmp_path: Path) -> None:
    write(tmp_path / "x.yml", "workload: m:W\n")
    assert load_preset("x", [tmp_path]).workload == "m:W"
    write(tmp_path / "x.toml", 'workload = "m:W"\n')
    with pytest.raises(PresetError, match=r"preset 'x' is ambiguous: .*x\.toml, .*x\.yml \(keep one"):
        load_preset("x", [tmp_path])


@pytest.mark.parametrize("name", ["p" * 300, "p" * 300 + ".toml", "d/" + "p" * 300])
def test_a_name_too_long_for_the_file_system_is_an_unknown_preset(tmp_path: Path, name: str) -> None:
    """ENAMETOOLONG: ``Path.is_file`` raises it instead of answering (found by the CLI fuzz test)."""
    with pytest.raises(PresetError, match=r"^(unknown preset|preset file) '(d/)?ppp"):
        load_preset(name, [tmp_path])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("workload: m:W\nsteps: 3\n", "unknown key(s) steps"),
        ("run:\n  steps: 3\n", "names no workload"),
        ("extends: {dir}/b.yaml\n", "extends itself"),
        ("- workload\n- m:W\n", "the YAML document is a list, not a mapping of keys"),
        ("workload: m:W\nrun:\n  steps: 3\n bad: 1\n", "(at line 4, column 2)"),
        ("workload: m:W\nrun:\n  steps:\n", "run.steps has no value"),
        ("workload: m:W\nrun: 3\n", "run must be a table of settings, got 3"),
        ("workload: m:W\njob:\n  1: 2\n", "key 1 in job is not a string"),
        (b"workload: \xff\n", "cannot read preset"),
    ],
    ids=[
        "unknown-key",
        "no-workload",
        "cycle",
        "not-a-mapping",
        "syntax",
        "null",
        "run-type",
        "key",
        "bytes",
    ],
)
def test_bad_yaml_gets_a_one_line_error(tmp_path: Path, text: str | bytes, message: str) -> None:
    write(tmp_path / "b.yaml", f"extends: {tmp_path / 'a.yaml'}\n")  # the cycle's other half
    path = tmp_path / "a.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.replace("{dir}", str(tmp_path)).encode())
    with pytest.raises(PresetError) as error:
        load_preset(str(path))
    assert message in str(error.value) and "\n" not in str(error.value), str(error.value)


def test_submit_dry_run_resolves_a_yaml_preset_and_writes_nothing(workdir: Path) -> None:
    preset = write(workdir / "mine.yaml", "extends: regression\nrun:\n  steps: 30\njob:\n  hidden: 8\n")
    bad = write(workdir / "bad.yaml", "extends: regression\nrun: [\n")
    before = tree_digest(workdir)
    result = cli("submit", "--preset", str(preset), "--dry-run", cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"steps": 30,' in result.stdout and '"hidden": 8,' in result.stdout, result.stdout
    failed = cli("submit", "--preset", str(bad), "--dry-run", cwd=workdir)
    assert failed.returncode == 2 and failed.stdout == ""
    assert (
        failed.stderr.startswith(f"trm-submit: error: cannot read preset {bad}: ")
        and failed.stderr.count("\n") == 1
    )
    assert tree_digest(workdir) == before
