"""Job presets: TOML or YAML files in ``jobs/`` (or any path) naming a workload and its settings.

A preset file looks like::

    description = "one line shown by --help"
    extends = "tiny"                               # optional: start from another preset
    workload = "trm_cluster.workloads.trm.workload:PEPTIDE_TRM"

    [run]        # trm_cluster.core.config.RunConfig fields (steps, seed, checkpoint_every, ...)
    steps = 600

    [job]        # the workload's own config dataclass fields (nested tables for nested dataclasses)
    hidden = 64

or the same as YAML (``.yaml`` or ``.yml``, read with ``yaml.safe_load``'s safe loader)::

    description: one line shown by --help
    extends: tiny
    workload: trm_cluster.workloads.trm.workload:PEPTIDE_TRM
    run:
      steps: 600
    job:
      hidden: 64

A name (``tiny``) is looked up as ``NAME.toml``, ``NAME.yaml`` or ``NAME.yml`` (two of them for one name is
an error); ``extends`` takes a name or a path, in either format, and merges tables key by key, the
extending file winning. YAML values are typed as TOML would type them: ``1e-4`` is a float (plain YAML 1.1
reads a string), and a key without a value or a key that is not a string is refused (TOML has neither).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

YAML_SUFFIXES = (".yaml", ".yml")
PRESET_SUFFIXES = (".toml", *YAML_SUFFIXES)
_KEYS = {"description": str, "extends": str, "workload": str, "run": dict, "job": dict}

_YamlLoader: Any = type("_YamlLoader", (yaml.SafeLoader,), {})
_YamlLoader.add_implicit_resolver(  # a float with an exponent, with or without a fraction, as in TOML
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


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
    checkout = Path(__file__).resolve().parents[2] / "jobs"  # trm_cluster/launch/ -> the checkout
    installed = Path(str(resources.files("trm_cluster") / "_jobs"))
    return [d for d in (checkout, installed) if d.is_dir()]


def available_presets(directories: Sequence[Path] | None = None) -> list[str]:
    dirs = preset_directories() if directories is None else directories
    return sorted({p.stem for d in dirs for p in d.iterdir() if p.suffix in PRESET_SUFFIXES and p.is_file()})


def load_preset(name_or_path: str, directories: Sequence[Path] | None = None) -> Preset:
    """Load a preset by name (``tiny``, looked up in ``directories``, default :func:`preset_directories`)
    or by path (``./my.toml``, ``./my.yaml``), following ``extends``."""
    return _load(name_or_path, preset_directories() if directories is None else directories, seen=())


def _locate(name_or_path: str, directories: Sequence[Path]) -> Path:
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix in PRESET_SUFFIXES or "/" in name_or_path:
        if _is_file(candidate):
            return candidate
        raise PresetError(f"preset file {name_or_path!r} does not exist")
    for directory in directories:
        found = [p for suffix in PRESET_SUFFIXES if _is_file(p := directory / f"{name_or_path}{suffix}")]
        if len(found) > 1:
            raise PresetError(
                f"preset {name_or_path!r} is ambiguous: {', '.join(map(str, found))} (keep one, or pass a path)"
            )
        if found:
            return found[0]
    known = ", ".join(available_presets(directories)) or "none found"
    raise PresetError(
        f"unknown preset {name_or_path!r} (known: {known}; or pass a path to a .toml or .yaml file)"
    )


def _is_file(path: Path) -> bool:
    """``Path.is_file`` that says False for a name the system refuses (too long: ENAMETOOLONG), which
    ``is_file`` raises as an OSError rather than answering (a fuzzed ``--preset`` found it)."""
    try:
        return path.is_file()
    except OSError:
        return False


def _load(name_or_path: str, directories: Sequence[Path], seen: tuple[Path, ...]) -> Preset:
    path = _locate(name_or_path, directories)
    if path.resolve() in seen:
        raise PresetError(f"preset {name_or_path!r} extends itself (cycle: {[str(p) for p in seen]})")
    data = _read(path)
    unknown = sorted(str(key) for key in data if key not in _KEYS)
    if unknown:
        raise PresetError(f"preset {path}: unknown key(s) {', '.join(unknown)}")
    for key, kind in _KEYS.items():
        if key in data and not isinstance(data[key], kind):
            expected = "a string" if kind is str else "a table of settings"
            raise PresetError(f"preset {path}: {key} must be {expected}, got {data[key]!r}")
    base = _load(data["extends"], directories, (*seen, path.resolve())) if "extends" in data else None
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


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
        if path.suffix not in YAML_SUFFIXES:
            return tomllib.loads(text)
        data = yaml.load(text, Loader=_YamlLoader)  # a SafeLoader, floats typed as in TOML
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise PresetError(f"cannot read preset {path}: {error}") from error
    except yaml.MarkedYAMLError as error:
        where = error.problem_mark or error.context_mark
        at = f" (at line {where.line + 1}, column {where.column + 1})" if where else ""
        problem = ": ".join(filter(None, (error.context, error.problem)))
        raise PresetError(f"cannot read preset {path}: {problem}{at}") from error
    except yaml.YAMLError as error:
        raise PresetError(f"cannot read preset {path}: {' '.join(str(error).split())}") from error
    if data is None:  # an empty document, like an empty TOML file
        return {}
    if not isinstance(data, dict):
        raise PresetError(
            f"preset {path}: the YAML document is a {type(data).__name__}, not a mapping of keys"
        )
    _refuse_what_toml_cannot_say(data, path, "")
    return data


def _refuse_what_toml_cannot_say(table: Mapping[Any, Any], path: Path, prefix: str) -> None:
    for key, value in table.items():
        if not isinstance(key, str):
            where = prefix.rstrip(".") or "the top level"
            raise PresetError(f"preset {path}: key {key!r} in {where} is not a string")
        if value is None:
            raise PresetError(f"preset {path}: {prefix}{key} has no value")
        if isinstance(value, Mapping):
            _refuse_what_toml_cannot_say(value, path, f"{prefix}{key}.")


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged
