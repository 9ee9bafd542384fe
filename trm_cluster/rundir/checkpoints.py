"""Checkpoint files: atomic writes with digests, retention, and a loader that falls back past bad ones.

A checkpoint is a plain dict loaded with ``torch.load(weights_only=True)`` (nothing in it can execute
code): ``{"model": weights, "trainer": the rest of the trainer state, "rng": ..., "meta": ...}``.
Capturing the state (:func:`capture`) is separate from writing it, so a writer can later run in the
background while training goes on.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch

from trm_cluster.rundir.atomic import atomic_writer
from trm_cluster.rundir.lease import ensure_held
from trm_cluster.rundir.manifest import CheckpointRecord, RunManifest, utc_now

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
FORMAT_VERSION = 1
"""``meta["format"]`` of a checkpoint's main file (state/snapshot.py writes it): the layout this module's
docstring describes. Nothing reads it yet (every checkpoint written so far has format 1): it lets a later
layout tell the older files apart."""


class CheckpointError(RuntimeError):
    """No usable checkpoint, or one that belongs to another run."""


def checkpoint_name(step: int, rank: int = 0) -> str:
    """``step_000000200.pt``; another rank's own part of the same checkpoint: ``step_000000200.rank1.pt``."""
    return f"step_{step:09d}.pt" if rank == 0 else f"step_{step:09d}.rank{rank}.pt"


SPARE_PREFIX = ".spare-rank"


def spare_name(rank: int) -> str:
    """``.spare-rank0``: the file of a checkpoint that retention dropped, kept for the next write of that
    rank's file to overwrite in place (rundir/atomic.py). Not a checkpoint: nothing reads it, no orphan
    removal deletes it, and the disk holds at rest the one file more that it holds during every save."""
    return f"{SPARE_PREFIX}{rank}"


def is_spare(name: str) -> bool:
    """Whether a file name in ``checkpoints/`` is a rank's spare (:func:`spare_name`), not a checkpoint."""
    return name.startswith(SPARE_PREFIX)


def capture(state: Any) -> Any:
    """Every tensor of a nested state detached and on the CPU.

    For a synchronous save, written before the next step can change anything: CPU tensors are not
    copied (saving costs no extra memory). A background save copies the state itself instead
    (state/background_save.py's ``snapshot_copy``), so training can go on changing its own tensors.
    """
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu")
    if isinstance(state, Mapping):
        return {key: capture(value) for key, value in state.items()}
    if isinstance(state, list):
        return [capture(value) for value in state]
    if isinstance(state, tuple):
        return tuple(capture(value) for value in state)
    return state


PARALLEL_HASH_BYTES = 1 << 20
"""Writes at least this large are hashed on a second thread while this one writes them (hashlib and
the write both release the GIL), so a large save costs about the longer of the two, not their sum."""


class _HashingWriter:
    """A write-only file wrapper that hashes and counts what passes through it (a context manager: it
    owns the hashing thread of large writes)."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self.digest = hashlib.sha256()
        self.size = 0
        self._hasher: ThreadPoolExecutor | None = None

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        self.size += view.nbytes
        if view.nbytes < PARALLEL_HASH_BYTES:
            self.digest.update(view)
            return self._handle.write(view)
        if self._hasher is None:
            self._hasher = ThreadPoolExecutor(1, thread_name_prefix="trm-cluster-hash")
        hashed = self._hasher.submit(self.digest.update, view)
        try:
            return self._handle.write(view)
        finally:
            hashed.result()  # in order: the next chunk is hashed only after this one

    def flush(self) -> None:
        self._handle.flush()

    def __enter__(self) -> _HashingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._hasher is not None:
            self._hasher.shutdown()


def sha256_of(path: Path, chunk_bytes: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class LoadedCheckpoint:
    record: CheckpointRecord
    payload: dict[str, Any]


class CheckpointStore:
    """The ``checkpoints/`` folder of one run, published through its manifest."""

    def __init__(self, manifest: RunManifest, keep_last: int, holder: int | None = None) -> None:
        """``holder``: the segment that writes; a publish after its lease was taken over is refused."""
        self.manifest = manifest
        self.holder = holder
        self.run_dir = manifest.run_dir
        self.directory = self.run_dir / CHECKPOINT_DIR
        self.keep_last = keep_last

    def save(
        self, step: int, payload: Mapping[str, Any], parts: list[dict[str, Any]] | None = None
    ) -> CheckpointRecord:
        """Write atomically, then publish in the manifest (with the other ranks' durable parts), then
        prune files beyond ``keep_last``."""
        record = self.write(step, payload)
        record.parts = list(parts or [])
        self.publish(record)
        return record

    def write(self, step: int, payload: Mapping[str, Any]) -> CheckpointRecord:
        part = self.write_part(step, 0, payload)
        return CheckpointRecord(
            step=step, file=part["file"], bytes=part["bytes"], sha256=part["sha256"], created_at=utc_now()
        )

    def write_part(self, step: int, rank: int, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Write one rank's file of a checkpoint atomically; its record for the manifest."""
        target = self.directory / checkpoint_name(step, rank)
        spare = self.directory / spare_name(rank)
        with atomic_writer(target, reuse=spare) as handle, _HashingWriter(handle) as hashing:
            torch.save(dict(payload), hashing)  # type: ignore[arg-type]
        file = str(target.relative_to(self.run_dir))
        return {"rank": rank, "file": file, "bytes": hashing.size, "sha256": hashing.digest.hexdigest()}

    def publish(self, record: CheckpointRecord) -> None:
        with self.manifest.update() as data:
            if self.holder is not None:
                ensure_held(data, self.holder)  # never prune (delete) the files of the run's new holder
            data.checkpoints = [c for c in data.checkpoints if c.step != record.step] + [record]
            data.checkpoints.sort(key=lambda c: c.step)
            dropped, data.checkpoints = (
                data.checkpoints[: -self.keep_last],
                data.checkpoints[-self.keep_last :],
            )
        for old in dropped:
            self._retire(old.file, rank=0)
            for part in old.parts:
                if part.get("sharded"):
                    (self.run_dir / part["file"]).unlink(missing_ok=True)
                else:
                    self._retire(part["file"], part["rank"])
            for folder in {Path(part["file"]).parent for part in old.parts if part.get("sharded")}:
                shutil.rmtree(self.run_dir / folder, ignore_errors=True)  # the step's DCP directory

    def record_weights_digest(self, step: int, digest: str) -> None:
        """Note the model weights' sha256 in the record of ``step`` (the run's final checkpoint): ``status``
        then shows it without loading a file that may hold gigabytes."""
        with self.manifest.update() as data:
            if self.holder is not None:
                ensure_held(data, self.holder)
            for record in data.checkpoints:
                if record.step == step:
                    record.weights_sha256 = digest

    def _retire(self, file: str, rank: int) -> None:
        """A dropped checkpoint file becomes its rank's spare (:func:`spare_name`), or is deleted."""
        path, spare = self.run_dir / file, self.directory / spare_name(rank)
        try:
            if spare.exists():
                path.unlink(missing_ok=True)
            else:
                path.rename(spare)
        except FileNotFoundError:
            pass

    def load_latest(self, run_uid: str) -> LoadedCheckpoint | None:
        """The newest checkpoint that exists, matches its digest and loads; None when there is none.

        Falls back past missing or corrupt files with a warning. A valid file that belongs to another
        run is an error, not a fallback: it means the directory was mixed up by hand.
        """
        records = self.manifest.read().checkpoints
        for record in reversed(records):
            payload = self._verified_payload(record)
            if payload is None:
                continue
            owner = payload.get("meta", {}).get("run_uid")
            if owner != run_uid:
                raise CheckpointError(
                    f"{record.file} belongs to run {owner!r}, not to this run {run_uid!r}; refusing to load it"
                )
            return LoadedCheckpoint(record, payload)
        if records:
            raise CheckpointError(
                f"none of the {len(records)} checkpoints recorded in {self.manifest.path} is usable "
                "(all missing or corrupt); refusing to restart from scratch"
            )
        return None

    def load_step(self, step: int, rank: int, run_uid: str) -> LoadedCheckpoint:
        """The checkpoint at ``step`` that rank 0 chose, with this rank's own part merged in as
        ``payload["rank_part"]`` (ranks other than 0; none for a rank the saving run did not have, whose
        own state a world-size change re-derives). No fallback here: every rank loads the same step."""
        record = next((c for c in self.manifest.read().checkpoints if c.step == step), None)
        # rank 0 chose this step after checking every shard's digest (load_latest): the others do not
        # read every rank's shards again, only their own part
        payload = self._verified_payload(record, shards=rank == 0) if record is not None else None
        if record is None or payload is None or payload.get("meta", {}).get("run_uid") != run_uid:
            raise CheckpointError(f"checkpoint of step {step} is not usable on rank {rank}")
        if rank and rank < record.world_size:
            part = next((p for p in record.parts if p["rank"] == rank and not p.get("sharded")), None)
            if part is None:
                raise CheckpointError(f"checkpoint of step {step} holds no part for rank {rank}")
            loaded = self._verified_file(part["file"], part["bytes"], part["sha256"], step)
            if loaded is None:
                raise CheckpointError(
                    f"rank {rank}'s part of checkpoint {step} ({part['file']}) is not usable"
                )
            payload["rank_part"] = loaded
        return LoadedCheckpoint(record, payload)

    def _verified_payload(self, record: CheckpointRecord, shards: bool = True) -> dict[str, Any] | None:
        """The main file's payload if it and every part are whole; ``shards``: the DCP files' digests too."""
        payload = self._verified_file(record.file, record.bytes, record.sha256, record.step)
        if payload is None:
            return None
        if "model" not in payload:
            log.warning("checkpoint %s has no 'model' entry; falling back", record.file)
            return None
        missing = [p["file"] for p in record.parts if not (self.run_dir / p["file"]).is_file()]
        if missing:
            log.warning(
                "checkpoint %s lacks the rank file(s) %s; falling back", record.file, ", ".join(missing)
            )
            return None
        for part in (p for p in record.parts if shards and p.get("sharded")):  # hashed once, by rank 0
            path = self.run_dir / part["file"]
            if os.path.getsize(path) != part["bytes"] or sha256_of(path) != part["sha256"]:
                log.warning("checkpoint %s: %s fails its digest; falling back", record.file, part["file"])
                return None
        return payload

    def _verified_file(self, file: str, size: int, sha256: str, step: int) -> dict[str, Any] | None:
        path = self.run_dir / file
        if not path.is_file():
            log.warning("checkpoint %s (step %d) is missing; falling back", file, step)
            return None
        if os.path.getsize(path) != size or sha256_of(path) != sha256:
            log.warning("checkpoint %s (step %d) fails its digest; falling back", file, step)
            return None
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            log.warning("checkpoint %s does not load (%s); falling back", file, error)
            return None
        if not isinstance(payload, dict):
            log.warning("checkpoint %s is not a dict; falling back", file)
            return None
        return payload

    def remove_orphans(self) -> list[str]:
        """Delete files a killed process left behind: temp files and unpublished checkpoints."""
        if not self.directory.is_dir():
            return []
        published_files = [
            file
            for c in self.manifest.read().checkpoints
            for file in (c.file, *(part["file"] for part in c.parts))
        ]
        published = {Path(file).name for file in published_files}
        removed = []
        for path in self.directory.iterdir():
            if path.is_dir():  # a step's DCP directory that no checkpoint names (a save killed midway)
                if not any(str(path.relative_to(self.run_dir)) in file for file in published_files):
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path.name)
                continue
            is_temp = path.name.startswith(".") and path.name.endswith(".tmp")
            is_unpublished = path.suffix == ".pt" and path.name not in published
            if is_temp or is_unpublished:
                path.unlink(missing_ok=True)
                removed.append(path.name)
        if removed:
            log.warning("removed %d unpublished checkpoint file(s): %s", len(removed), ", ".join(removed))
        return removed
