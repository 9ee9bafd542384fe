"""What a run hit by the chaos tool must have left, checked from its files against an uninterrupted run.

Independent of the run's own bookkeeping wherever the files allow: checkpoints are hashed and loaded
here (not trusted from the manifest's "durable" step), W&B rows are read back from the ``.wandb``
files in the order ``sync`` would upload them, and processes are looked up in ``/proc``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import itertools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trm_cluster.chaos import procs as chaos_procs
from trm_cluster.ops.wandb_sync import SyncError, plan_sync
from trm_cluster.rundir.checkpoints import CHECKPOINT_DIR, is_spare
from trm_cluster.rundir.manifest import MANIFEST_NAME, ManifestData, ManifestError, RunManifest
from trm_cluster.wandb import files as wandb_files
from trm_cluster.wandb.writers import wait_for_writers

MACHINE_TIMINGS = ("trainer/steps_per_s", "train/spectra_per_s", "train/step_time_s")
"""Logged values that measure the machine, not the training: they differ between any two runs."""
RUN_IDENTITY = ("meta.saved_at", "meta.run_uid", "meta.run_name")
"""What two runs of the same training never share: when a checkpoint was saved and which run it is."""
PER_PROCESS = (
    "tracking.journal",
    *(f"tracking.window.{p}.{t}" for p in ("sum", "last") for t in MACHINE_TIMINGS),
)
"""A process journals the W&B rows it logged itself (the rows are checked in the .wandb files instead)."""


@dataclass(frozen=True)
class Verdict:
    name: str
    ok: bool
    detail: str = ""


def verify(run_dir: Path, reference: Path, processes: Iterable[chaos_procs.Proc]) -> list[Verdict]:
    """Every guarantee of a chaos run, each as one verdict (the first problem found, if any)."""
    try:
        data = RunManifest(run_dir).read()
        json.loads((run_dir / MANIFEST_NAME).read_text())
    except (ManifestError, ValueError) as error:
        return [Verdict("manifest", False, str(error))]
    checks = [
        Verdict("manifest", *_completed(data)),
        Verdict("checkpoints", *_checkpoints(run_dir, data)),
        Verdict("state", *_same_state(reference, run_dir)),
        Verdict("clean", *_clean(run_dir, data, list(processes))),
    ]
    if data.wandb.mode != "disabled":
        checks += [
            Verdict("wandb-id", *_one_wandb_run(run_dir, data)),
            Verdict("wandb-rows", *_rows(reference, run_dir, data)),
        ]
    return checks


def _completed(data: ManifestData) -> tuple[bool, str]:
    if data.status != "completed" or data.step != data.total_steps:
        return False, f"status {data.status} at step {data.step} of {data.total_steps}"
    if data.open_segment is not None:
        return False, f"segment {data.open_segment.index} is still open"
    return True, f"{len(data.segments)} segments"


def inside(run_dir: Path, file: str) -> Path | None:
    """The file's path if it lies inside the run directory (no ``..`` escape, no absolute path)."""
    path = (run_dir / file).resolve()
    return path if path.is_relative_to(run_dir.resolve()) and not Path(file).is_absolute() else None


def _checkpoints(run_dir: Path, data: ManifestData) -> tuple[bool, str]:
    """Every listed file (and rank part) exists inside the run, has its size and sha256, and loads."""
    if not data.checkpoints:
        return False, "no checkpoint listed"
    for record in data.checkpoints:
        for file, size, digest, sharded in [(record.file, record.bytes, record.sha256, False)] + [
            (p["file"], p["bytes"], p["sha256"], bool(p.get("sharded"))) for p in record.parts
        ]:
            path = inside(run_dir, file)
            if path is None or not path.is_file():
                return False, f"{file} (step {record.step}) is missing or outside the run"
            blob = path.read_bytes()
            if len(blob) != size or hashlib.sha256(blob).hexdigest() != digest:
                return False, f"{file} (step {record.step}) fails its digest"
            if not sharded:  # a DCP file is read by DCP, at a resume; its digest is what proves it here
                torch.load(path, map_location="cpu", weights_only=True)
    return True, f"{len(data.checkpoints)} listed, all pass"


def final_payload(run_dir: Path) -> dict[str, Any]:
    data = RunManifest(run_dir).read()
    loaded = torch.load(run_dir / data.checkpoints[-1].file, map_location="cpu", weights_only=True)
    assert isinstance(loaded, dict)
    return loaded


def _same_state(reference: Path, run_dir: Path) -> tuple[bool, str]:
    """The final checkpoints hold the same model and full trainer state, bit for bit."""
    problems = differences(final_payload(reference), final_payload(run_dir), (*RUN_IDENTITY, *PER_PROCESS))
    if problems:
        return False, f"{len(problems)} difference(s), first: {problems[0]}"
    return True, "bit-identical"


def differences(a: Any, b: Any, ignore: tuple[str, ...], path: str = "") -> list[str]:
    """Every difference as ``path: what``; tensors by their bytes, floats by their bits."""
    if any(fnmatch.fnmatchcase(path, pattern) for pattern in ignore):
        return []
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        same = a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bytes(a), _bytes(b))
        return [] if same else [f"{path}: tensors differ"]
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if set(a) != set(b):
            return [f"{path}: keys {sorted(map(str, set(a) ^ set(b)))} in one only"]
        return [d for key in a for d in differences(a[key], b[key], ignore, f"{path}.{key}".lstrip("."))]
    if isinstance(a, list | tuple) and type(a) is type(b):
        if len(a) != len(b):
            return [f"{path}: {len(a)} vs {len(b)} items"]
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in differences(x, y, ignore, f"{path}.{i}".lstrip("."))
        ]
    if type(a) is not type(b):
        return [f"{path}: {type(a).__name__} vs {type(b).__name__}"]
    same = a.hex() == b.hex() if isinstance(a, float) else a == b
    return [] if same else [f"{path}: {a!r:.60} vs {b!r:.60}"]


def _bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def _clean(run_dir: Path, data: ManifestData, processes: list[chaos_procs.Proc]) -> tuple[bool, str]:
    """No temp file, no unlisted checkpoint file (a rank's spare is none), no process of the run (or its
    wandb-core) left."""
    temps = [*run_dir.glob(".*.tmp"), *(run_dir / CHECKPOINT_DIR).glob(".*.tmp")]
    if temps:
        return False, f"temp files left: {', '.join(sorted(p.name for p in temps))}"
    listed = {Path(f).name for c in data.checkpoints for f in (c.file, *(p["file"] for p in c.parts))}
    listed |= {Path(p["file"]).parent.name for c in data.checkpoints for p in c.parts if p.get("sharded")}
    on_disk = {p.name for p in (run_dir / CHECKPOINT_DIR).iterdir() if not is_spare(p.name)}
    if on_disk != listed:
        return (
            False,
            f"checkpoint files not listed: {sorted(on_disk - listed)}; listed, missing: {sorted(listed - on_disk)}",
        )
    left = [p.pid for p in processes if chaos_procs.alive(p)]
    left += wait_for_writers([p.pid for p in processes])
    left += chaos_procs.mentioning(str(run_dir))
    if left:
        return False, f"processes left: {sorted(set(left))}"
    return True, f"{len(processes)} processes, all gone"


def _one_wandb_run(run_dir: Path, data: ManifestData) -> tuple[bool, str]:
    files = wandb_files.find_segments(run_dir)
    ids = {s.run_id for s in map(wandb_files.read_segment, files) if s.run_id is not None or s.steps}
    if ids != {data.wandb.run_id}:
        return False, f"W&B run ids {sorted(map(str, ids))}, the manifest's is {data.wandb.run_id}"
    return True, f"{len(files)} .wandb files, one run id"


def comparable(row: Mapping[str, Any]) -> dict[str, Any]:
    """A W&B row without what measures the machine (wall times, speeds)."""
    return {k: v for k, v in row.items() if k not in ("_timestamp", "_runtime", *MACHINE_TIMINGS)}


def upload_order_rows(run_dir: Path, data: ManifestData) -> list[dict[str, Any]]:
    """The rows a later ``sync`` would upload, in its order (the manifest's segments, each file once)."""
    plan = plan_sync(run_dir, data)
    planned = {p.file.resolve() for p in plan if p.file is not None}
    stray = [
        f
        for f in wandb_files.find_segments(run_dir)
        if f.resolve() not in planned and wandb_files.read_segment(f).steps
    ]
    if stray:
        raise SyncError(f"W&B files with rows that no segment names (sync would never upload them): {stray}")
    return [comparable(r) for p in plan if p.pending for r in wandb_files.read_segment(p.file).history]  # type: ignore[arg-type]


def _rows(reference: Path, run_dir: Path, data: ManifestData) -> tuple[bool, str]:
    """Same steps, same values, none missing, none twice, steps rising in upload order."""
    try:
        rows = upload_order_rows(run_dir, data)
    except SyncError as error:
        return False, str(error)
    expected = [
        comparable(r)
        for f in wandb_files.find_segments(reference)
        for r in wandb_files.read_segment(f).history
    ]
    steps = [int(r.get("_step", -1)) for r in rows]
    if any(b <= a for a, b in itertools.pairwise(steps)) or -1 in steps:
        return False, f"steps not strictly rising in upload order: {steps}"
    if rows == expected:
        return True, f"{len(rows)} rows equal the uninterrupted run's"
    wanted = {int(r.get("_step", -1)) for r in expected}
    missing, extra = sorted(wanted - set(steps)), sorted(set(steps) - wanted)
    other = next((r.get("_step") for r, e in zip(rows, expected, strict=False) if r != e), None)
    return (
        False,
        f"{len(rows)} rows vs {len(expected)}: missing {missing}, extra {extra}, first differing at {other}",
    )
