"""Read W&B offline transaction logs (``run-<id>.wandb``) without a server.

Why: every requeued process of a job writes its own ``.wandb`` file for the same run id. Tests read them
back to prove the segments form ONE run with no duplicated or shifted steps, and a resuming process reads
them to learn the highest step an earlier (maybe SIGKILLed) process really got onto disk, so it never logs
that step again (``wandb sync`` would shift such a repeat to a wrong step, silently).

wandb 0.31 no longer ships a Python reader (``wandb.sdk.internal.datastore`` is gone), so the framing is
done here. Format, checked against files written by wandb 0.31.0: a 7-byte header ``:W&B`` + uint16 LE
0xBEE1 + uint8 version 0, then the LevelDB log format counted from the start of the file (the header sits in
the first 32 KiB block): chunks of ``uint32 LE crc, uint16 LE length, uint8 type`` + data, with
``crc = zlib.crc32(type byte + data)`` UNMASKED (no LevelDB masking); a block tail under 7 bytes is zero
padding. Each whole record is a ``wandb.proto.wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

from google.protobuf.message import DecodeError
from wandb.proto import wandb_internal_pb2

# wandb's generated protobuf modules ship without type stubs (one is picked per protobuf major version).
pb: Any = wandb_internal_pb2
Record: TypeAlias = Any
"""A ``wandb.proto.wandb_internal_pb2.Record``."""
_Item: TypeAlias = Any

__all__ = [
    "Record",
    "WandbSegment",
    "find_segments",
    "iter_records",
    "max_logged_step",
    "read_segment",
]

_HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
_BLOCK = 32 * 1024
_CHUNK_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _chunks(path: Path) -> Iterator[tuple[int, bytes]]:
    """Yield (type, data) of each intact chunk; stop quietly at the first torn or corrupt one.

    Why quietly: a process killed mid-write leaves a torn tail, and everything before it is still valid.
    """
    with path.open("rb") as f:
        head = f.read(len(_HEADER))
        if head != _HEADER:
            if _HEADER.startswith(head):  # empty or torn header: the writer died before any record
                return
            raise ValueError(f"{path}: not a W&B transaction log (header {head!r}, expected {_HEADER!r})")
        pos = len(_HEADER)
        block = head + f.read(_BLOCK - len(_HEADER))
        while block:
            while _BLOCK - pos >= _CHUNK_HEADER:
                if pos + _CHUNK_HEADER > len(block):
                    return  # end of file (or a torn chunk header)
                crc, length, ctype = struct.unpack_from("<IHB", block, pos)
                end = pos + _CHUNK_HEADER + length
                if ctype == 0 or end > _BLOCK or end > len(block):
                    return  # zero fill, a chunk crossing its block, or a torn chunk
                data = block[pos + _CHUNK_HEADER : end]
                if zlib.crc32(bytes((ctype,)) + data) != crc:
                    return
                yield ctype, data
                pos = end
            if len(block) < _BLOCK:
                return
            block, pos = f.read(_BLOCK), 0


def iter_records(path: str | Path) -> Iterator[Record]:
    """Yield the records of a ``.wandb`` file in write order, stopping cleanly at a truncated tail.

    Raises ValueError if the file does not start with the W&B header (an empty or partly written header
    yields nothing), or if a chunk passes its crc but is not a Record (a format change, not a torn write).
    """
    path = Path(path)
    parts: list[bytes] | None = None
    for ctype, data in _chunks(path):
        if ctype == _FULL:
            if parts is not None:
                return  # FIRST without LAST: corrupt
            payload = data
        elif ctype == _FIRST:
            if parts is not None:
                return
            parts = [data]
            continue
        elif ctype in (_MIDDLE, _LAST) and parts is not None:
            parts.append(data)
            if ctype == _MIDDLE:
                continue
            payload, parts = b"".join(parts), None
        else:
            return  # unknown type, or MIDDLE/LAST without FIRST
        record = pb.Record()
        try:
            record.ParseFromString(payload)
        except DecodeError as e:
            raise ValueError(f"{path}: chunk with a valid crc is not a wandb Record: {e}") from e
        yield record


@dataclass(frozen=True)
class WandbSegment:
    """What one process wrote into its ``.wandb`` file.

    ``resume`` is what the process asked for (``wandb.init(resume=...)`` set); ``resumed`` is the run
    record's own flag (offline it is always False: only a server can say the run existed).
    ``history`` rows hold ``_step`` (int) and the logged keys (plus wandb's ``_timestamp``/``_runtime``);
    nested keys become nested dicts in history, config and summary.
    """

    path: Path
    run_id: str | None
    project: str | None
    entity: str | None
    resume: bool
    resumed: bool
    starting_step: int
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None
    preempting: bool = False
    group: str | None = None
    job_type: str | None = None
    tags: tuple[str, ...] = ()
    notes: str | None = None


def _keys(item: _Item) -> list[str]:
    """wandb 0.31 writes plain keys as a one-element ``nested_key``; older writers used ``key``."""
    return list(item.nested_key) if item.nested_key else [item.key]


def _assign(target: dict[str, Any], keys: Sequence[str], value: Any) -> None:
    for k in keys[:-1]:
        sub = target.get(k)
        if not isinstance(sub, dict):
            sub = target[k] = {}
        target = sub
    target[keys[-1]] = value


def _remove(target: dict[str, Any], keys: Sequence[str]) -> None:
    for k in keys[:-1]:
        sub = target.get(k)
        if not isinstance(sub, dict):
            return
        target = sub
    target.pop(keys[-1], None)


def _history_value(item: _Item) -> Any:
    """Decode value_json, or the typed oneof that newer writers may use instead."""
    kind = item.WhichOneof("value")
    if kind is None:
        return json.loads(item.value_json) if item.value_json else None
    if kind == "none":
        return None
    if kind == "json":
        return json.loads(item.json)
    return getattr(item, kind)


def _update(target: dict[str, Any], items: Iterable[_Item]) -> None:
    for it in items:
        _assign(target, _keys(it), json.loads(it.value_json) if it.value_json else None)


def read_segment(path: str | Path) -> WandbSegment:
    """Summarise one ``.wandb`` file: run identity, history rows in file order, config, exit, preempting."""
    path = Path(path)
    run: Any = None
    history: list[dict[str, Any]] = []
    config: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    exit_code: int | None = None
    preempting = False
    for rec in iter_records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run = rec.run  # the last one wins; wandb 0.31 writes one per file
            _update(config, run.config.update)
            _update(summary, run.summary.update)
        elif kind == "history":
            row: dict[str, Any] = {}
            for h in rec.history.item:
                _assign(row, _keys(h), _history_value(h))
            row["_step"] = int(row.get("_step", rec.history.step.num))
            history.append(row)
        elif kind == "config":
            _update(config, rec.config.update)
            for c in rec.config.remove:
                _remove(config, _keys(c))
        elif kind == "summary":
            _update(summary, rec.summary.update)
            for s in rec.summary.remove:
                _remove(summary, _keys(s))
        elif kind == "exit":
            exit_code = rec.exit.exit_code
        elif kind == "preempting":
            preempting = True
    return WandbSegment(
        path=path,
        run_id=run.run_id if run else None,
        project=run.project if run else None,
        entity=(run.entity or None) if run else None,
        resume=run.resume if run else False,
        resumed=run.resumed if run else False,
        starting_step=run.starting_step if run else 0,
        history=history,
        steps=[r["_step"] for r in history],
        config=config,
        summary=summary,
        exit_code=exit_code,
        preempting=preempting,
        group=(run.run_group or None) if run else None,
        job_type=(run.job_type or None) if run else None,
        tags=tuple(run.tags) if run else (),
        notes=(run.notes or None) if run else None,
    )


_DIR_RE = re.compile(r"^(?:offline-)?run-(\d{8}_\d{6})-(.*)$")


def _segment_order(file: Path) -> tuple[str, int, str]:
    """Order by the directory's start time, then by wandb's ``-N`` suffix for same-second starts.

    Why not the plain path: ``...-ID-1/`` sorts before ``...-ID/`` as a string, and ``offline-run-`` and
    ``run-`` directories would not interleave by time.
    """
    name = file.parent.name
    m = _DIR_RE.match(name)
    if not m:
        return ("", 0, name)
    stamp, rest = m.groups()
    run_id = file.stem.removeprefix("run-")
    suffix = rest.removeprefix(run_id).removeprefix("-")
    return (stamp, int(suffix) if suffix.isdigit() else 0, name)


def find_segments(wandb_dir: str | Path) -> list[Path]:
    """The ``run-*.wandb`` files under a run directory (holding ``wandb/`` or ``.wandb/``) or a wandb dir.

    Sorted by start time then same-second suffix (clock order: across nodes the manifest's order is
    better). The ``latest-run`` symlink is skipped so no file is counted twice.
    """
    base = Path(wandb_dir)
    roots = [d for d in (base / "wandb", base / ".wandb") if d.is_dir()] or [base]
    files = {
        f
        for root in roots
        for f in root.glob("*run-*/run-*.wandb")
        if f.is_file() and not f.parent.is_symlink()
    }
    return sorted(files, key=_segment_order)


def max_logged_step(paths: Iterable[str | Path]) -> int | None:
    """Highest ``_step`` durably written in any of the files, or None if none holds a history row."""
    best: int | None = None
    for p in paths:
        for rec in iter_records(p):
            if rec.WhichOneof("record_type") == "history":
                step = next(
                    (_history_value(h) for h in rec.history.item if _keys(h) == ["_step"]),
                    rec.history.step.num,
                )
                best = int(step) if best is None else max(best, int(step))
    return best
