"""What a manifest read from disk must look like before anything acts on it: every field of the right
type, and every file it names inside the run directory.

A manifest is edited by hand, restored from backups, copied between clusters: a wrong type would
otherwise surface as a traceback deep inside a command (or a wrong comparison), and a checkpoint path
such as ``../../x`` or ``/etc/x`` would let a manifest make the package read, or delete when pruning,
a file outside its run.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import PurePosixPath
from typing import Any


class SchemaError(ValueError):
    """A field of the wrong type, or a path that leaves the run directory; the message names the field."""


def check(obj: Any, where: str = "") -> None:
    """Check every field of a (nested) manifest dataclass against its annotation."""
    hints = typing.get_type_hints(type(obj))
    for field in dataclasses.fields(obj):
        _check_value(getattr(obj, field.name), hints[field.name], f"{where}{field.name}")


def _check_value(value: Any, hint: Any, where: str) -> None:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in args:
            try:
                return _check_value(value, option, where)
            except SchemaError as error:
                errors.append(error)
        raise errors[-1]
    if hint is type(None):
        _expect(value is None, where, "null")
    elif hint is Any:
        return
    elif origin is typing.Literal:
        _expect(value in args, where, " or ".join(map(repr, args)))
    elif dataclasses.is_dataclass(hint):
        _expect(dataclasses.is_dataclass(value), where, "an object")
        check(value, f"{where}.")
    elif origin is list:
        _expect(isinstance(value, list), where, "a list")
        for index, item in enumerate(value):
            _check_value(item, args[0] if args else Any, f"{where}[{index}]")
    elif origin is dict or hint is dict:
        _expect(isinstance(value, dict) and all(isinstance(k, str) for k in value), where, "an object")
        for key, item in value.items():
            _check_value(item, args[1] if args else Any, f"{where}.{key}")
    elif hint is int:
        _expect(isinstance(value, int) and not isinstance(value, bool), where, "an integer")
    elif hint is float:
        _expect(isinstance(value, int | float) and not isinstance(value, bool), where, "a number")
    elif hint in (str, bool):
        _expect(isinstance(value, hint), where, "a string" if hint is str else "true or false")
    else:  # pragma: no cover - a new annotation kind in the manifest's dataclasses
        raise TypeError(f"the manifest schema cannot check {where}: {hint!r}")


def _expect(ok: bool, where: str, what: str) -> None:
    if not ok:
        raise SchemaError(f"{where} must be {what}")


def check_relative_path(path: str, where: str) -> None:
    """A path inside the run directory: relative, without ``..``, not empty."""
    parts = PurePosixPath(path).parts
    if not path or path.startswith(("/", "\\")) or ".." in parts or "\\" in path or "\0" in path:
        raise SchemaError(f"{where} ({path!r}) must be a path inside the run directory")


def check_paths(data: Any) -> None:
    """Every file the manifest names (checkpoints, their rank parts, W&B segment folders) stays inside."""
    for i, record in enumerate(data.checkpoints):
        check_relative_path(record.file, f"checkpoints[{i}].file")
        for j, part in enumerate(record.parts):
            file = part.get("file")
            if not isinstance(file, str):
                raise SchemaError(f"checkpoints[{i}].parts[{j}].file must be a string")
            check_relative_path(file, f"checkpoints[{i}].parts[{j}].file")
            for key in ("bytes", "rank"):
                _check_value(part.get(key), int, f"checkpoints[{i}].parts[{j}].{key}")
            _check_value(part.get("sha256"), str, f"checkpoints[{i}].parts[{j}].sha256")
    for i, segment in enumerate(data.segments):
        if segment.wandb_dir is not None:
            check_relative_path(segment.wandb_dir, f"segments[{i}].wandb_dir")
