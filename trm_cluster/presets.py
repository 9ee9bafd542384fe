"""Job presets: TOML files in ``jobs/`` (or any path) naming a workload and its settings.

A preset file looks like::

    description = "one line shown by --help"
    extends = "tiny"                               # optional: start from another preset
    workload = "trm_cluster.trm.workload:PEPTIDE_TRM"

    [run]        # trm_cluster.config.RunConfig fields (steps, seed, checkpoint_every, ...)
    steps = 600

    [job]        # the workload's own config dataclass fields (nested tables for nested dataclasses)
    hidden = 64

``extends`` merges tables key by key, the extending file winning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

PRESET_SUFFIX = ".toml"


class PresetError(ValueError):
    """A preset that cannot be found or read."""


@dataclass(frozen=True)
class Preset:
    name: str
    workload: str
    description: str = ""
    run: dict[str, Any] = field(default_factory=dict)
    job: dict[str, Any] = field(default_factory=dict)


def preset_directories() -> list[Path]:
    """Where named presets live: the checkout's ``jobs/`` first, then the copy inside the wheel."""
    checkout = Path(__file__).resolve().parent.parent / "jobs"
    installed = Path(str(resources.files("trm_cluster") / "_jobs"))
    return [d for d in (checkout, installed) if d.is_dir()]


def available_presets() -> list[str]:
    names = {p.stem for d in preset_directories() for p in d.glob(f"*{PRESET_SUFFIX}")}
    return sorted(names)


def load_preset(name_or_path: str) -> Preset:
    """Load a preset by name (``tiny``) or by path (``./my.toml``), following ``extends``."""
    return _load(name_or_path, seen=())


def _locate(name_or_path: str) -> Path:
    candidate = Path(name_or_path).expanduser()
    looks_like_path = candidate.suffix == PRESET_SUFFIX or "/" in name_or_path
    if looks_like_path:
        if candidate.is_file():
            return candidate
        raise PresetError(f"preset file {name_or_path!r} does not exist")
    for directory in preset_directories():
        path = directory / f"{name_or_path}{PRESET_SUFFIX}"
        if path.is_file():
            return path
    known = ", ".join(available_presets()) or "none found"
    raise PresetError(f"unknown preset {name_or_path!r} (known: {known}; or pass a path to a .toml file)")


def _load(name_or_path: str, seen: tuple[Path, ...]) -> Preset:
    path = _locate(name_or_path)
    if path.resolve() in seen:
        raise PresetError(f"preset {name_or_path!r} extends itself (cycle: {[str(p) for p in seen]})")
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise PresetError(f"cannot read preset {path}: {error}") from error
    unknown = sorted(set(data) - {"description", "extends", "workload", "run", "job"})
    if unknown:
        raise PresetError(f"preset {path}: unknown key(s) {', '.join(unknown)}")
    base = _load(data["extends"], (*seen, path.resolve())) if "extends" in data else None
    workload = data.get("workload", base.workload if base else "")
    if not workload:
        raise PresetError(f"preset {path} names no workload")
    return Preset(
        name=path.stem,
        workload=workload,
        description=data.get("description", base.description if base else ""),
        run=_merge(base.run if base else {}, data.get("run", {})),
        job=_merge(base.job if base else {}, data.get("job", {})),
    )


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged
