"""The run manifest: what must outlive every process of a run, in one locked, atomic JSON file.

``manifest.json`` holds the resolved config, the W&B run id, one segment per process start, the
durable checkpoints and the highest W&B step on disk. Readers need no lock (writes are atomic
replaces); every read-modify-write holds a ``filelock.FileLock`` on ``manifest.json.lock``.
Never call :meth:`RunManifest.update` from a signal handler: the interrupted code may hold the lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import filelock

from trm_cluster.core.wandb_options import NO_PROJECT, WandbOptions
from trm_cluster.rundir.atomic import atomic_write_bytes, make_private_dirs, stale_temp_files
from trm_cluster.rundir.schema import SchemaError, check, check_paths
from trm_cluster.rundir.segment_timings import SegmentTimings, timings_from_segment

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"

EndReason = Literal["completed", "timeout", "preempted", "failed", "killed", "hung"]
RunStatus = Literal["running", "requeued", "completed", "failed"]
END_REASONS: tuple[str, ...] = ("completed", "timeout", "preempted", "failed", "killed", "hung")


class ManifestError(RuntimeError):
    """A manifest that is missing, corrupt, too new, or locked for too long."""


def printable(text: str) -> str:
    """``text`` with control characters escaped: a corrupt manifest's key or value must not break the
    one-line error (a ``\\r`` or ``\\n`` inside a field name once did)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def config_hash(config: dict[str, Any]) -> str:
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class WandbInfo:
    """The run's W&B options, chosen once when the run was created (core/wandb_options.py), its run id,
    and what the processes have done with it so far."""

    project: str
    entity: str | None
    run_id: str
    mode: str
    """online, offline or disabled: what the first process chose, kept for every later one."""
    last_step: int = -1
    """Highest W&B step known to be on disk; later processes log only steps above it."""
    started: bool = False
    """Whether any process has called wandb.init for this run (new vs resumed)."""
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    job_type: str | None = None
    notes: str | None = None

    @classmethod
    def chosen(cls, options: WandbOptions, run_id: str, mode: str) -> WandbInfo:
        """A new run's record: ``options`` as given, the run id and the resolved mode (never "auto")."""
        return cls(
            project=options.project or NO_PROJECT,
            entity=options.entity,
            run_id=run_id,
            mode=mode,
            group=options.group,
            tags=list(options.tags or ()),
            job_type=options.job_type,
            notes=options.notes,
        )

    def options(self) -> WandbOptions:
        """The options this record was chosen with (a fork's parent: the child's defaults)."""
        return WandbOptions(project=self.project, entity=self.entity, mode=self.mode, group=self.group,
                            tags=tuple(self.tags), job_type=self.job_type, notes=self.notes)  # fmt: skip

    def init_arguments(self) -> dict[str, Any]:
        """What ``wandb.init`` gets from this record: id, project, entity and mode; group, tags, job_type
        and notes only when set, so that W&B's own defaults apply otherwise."""
        optional = {
            "group": self.group,
            "tags": list(self.tags),
            "job_type": self.job_type,
            "notes": self.notes,
        }
        given = {key: value for key, value in optional.items() if value}
        return {"id": self.run_id, "project": self.project, "entity": self.entity, "mode": self.mode, **given}


@dataclass
class Segment:
    """One process start of the run, closed with the reason it ended."""

    index: int
    job_id: str
    array_index: int | None
    restart_count: int
    host: str
    pid: int
    executor: str
    start_time: str
    start_step: int
    end_time: str | None = None
    end_step: int | None = None
    end_reason: str | None = None
    signal: str | None = None
    message: str | None = None
    wandb_dir: str | None = None
    failed_step: int | None = None
    """The step whose exception ended this segment (None: it did not fail inside the loop)."""
    # goodput (all optional: older manifests lack them)
    last_seen_step: int | None = None
    """A killed segment: the last step its heartbeat reported (the steps above end_step are recomputed)."""
    last_seen_time: str | None = None
    recomputed_steps: int | None = None
    """A killed segment: steps it trained past its last durable checkpoint, trained again by the next."""
    timings: SegmentTimings = field(default_factory=SegmentTimings)
    """What this segment's process measured (segment_timings.py): goodput and the grace check read it."""
    warning: str | None = None
    """A warning about the run's settings seen by this process (a grace window too short)."""
    hangs: list[str] = field(default_factory=list)
    """A hung segment: each rank's watchdog's line (runtime/watchdog.py), stuck in its step or waiting at
    the boundary for a stuck peer."""


@dataclass
class CheckpointRecord:
    step: int
    file: str
    """Relative to the run directory."""
    bytes: int
    sha256: str
    created_at: str
    parts: list[dict[str, Any]] = field(default_factory=list)
    """The other ranks' own state (RNG streams, data position): ``{"rank", "file", "bytes", "sha256"}``
    each, written before this record was published; with ``"sharded": true``, a file of the step's DCP
    directory (sharded state, written by every rank)."""
    weights_sha256: str | None = None
    """The sha256 of the model's weights (``core/digest.py``), recorded with the run's final checkpoint, so
    that ``status`` shows it without loading the file; None on other checkpoints and for sharded state."""

    @property
    def world_size(self) -> int:
        """How many ranks wrote it: rank 0's main file, and every rank's part."""
        return len({0, *(int(part["rank"]) for part in self.parts)})


@dataclass
class ConfigChange:
    at_step: int
    time: str
    changes: dict[str, list[Any]]
    """Dotted key -> [old, new]."""


@dataclass
class ForkOrigin:
    """The run a fork started from (``submit --fork``): which one, at which step, and what changed."""

    run_dir: str
    name: str
    run_uid: str
    wandb_run_id: str
    step: int
    changes: dict[str, list[Any]] = field(default_factory=dict)
    """Dotted key -> [parent's value, the fork's value]."""


@dataclass
class ManifestData:
    name: str
    run_uid: str
    workload: str
    config: dict[str, Any]
    config_hash: str
    total_steps: int
    wandb: WandbInfo
    max_requeues: int
    """Timeout requeues allowed per submission (preemptions are never counted)."""
    timeouts_at_submit: int = 0
    """``requeues["timeout"]`` when the latest submission was made: the budget counts from there."""
    launch: dict[str, Any] = field(default_factory=dict)
    """The executor options of the latest submission (informational)."""
    schema_version: int = SCHEMA_VERSION
    created_at: str = field(default_factory=utc_now)
    status: str = "running"
    segments: list[Segment] = field(default_factory=list)
    checkpoints: list[CheckpointRecord] = field(default_factory=list)
    config_changes: list[ConfigChange] = field(default_factory=list)
    requeues: dict[str, int] = field(default_factory=lambda: {"timeout": 0, "preempted": 0})
    forked_from: ForkOrigin | None = None
    """Set when the run was forked from another run's checkpoint (older manifests: absent)."""
    script_config: dict[str, Any] = field(default_factory=dict)
    """The script's own config, as its latest process passed it to ``session(config=...)`` (older: absent)."""

    def to_dict(self) -> dict[str, Any]:
        raw = dataclasses.asdict(self)
        for segment, record in zip(raw["segments"], self.segments, strict=True):
            segment["timings"] = record.timings.measured()  # only what was measured: read back the same
        return raw

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ManifestData:
        data = dict(raw)
        data["wandb"] = WandbInfo(**data["wandb"])
        data["segments"] = [Segment(**timings_from_segment(s)) for s in _listed(data, "segments")]
        data["checkpoints"] = [CheckpointRecord(**c) for c in _listed(data, "checkpoints")]
        data["config_changes"] = [ConfigChange(**c) for c in _listed(data, "config_changes")]
        if data.get("forked_from") is not None:
            data["forked_from"] = ForkOrigin(**data["forked_from"])
        return cls(**data)

    @property
    def step(self) -> int:
        """The newest durable step (0 when no checkpoint exists yet)."""
        return self.checkpoints[-1].step if self.checkpoints else 0

    @property
    def open_segment(self) -> Segment | None:
        if self.segments and self.segments[-1].end_reason is None:
            return self.segments[-1]
        return None


def _listed(raw: dict[str, Any], key: str) -> list[Any]:
    """A list field as written (an object or a string is not read as the list of its keys or letters)."""
    value = raw.get(key, [])
    if not isinstance(value, list):
        raise TypeError(f"{key} must be a list")
    return value


class RunManifest:
    """Locked, atomic access to ``<run_dir>/manifest.json``."""

    def __init__(self, run_dir: Path, lock_timeout_s: float = 60.0) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / MANIFEST_NAME
        self.lock_timeout_s = lock_timeout_s
        self._lock = filelock.FileLock(str(self.path) + ".lock", timeout=lock_timeout_s)

    def exists(self) -> bool:
        return self.path.is_file()

    def read(self) -> ManifestData:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            raise ManifestError(f"{self.run_dir} holds no run ({MANIFEST_NAME} not found)") from None
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as error:
            raise ManifestError(
                f"{self.path} is corrupt (not valid JSON: {error}); refusing to touch it"
            ) from None
        if not isinstance(raw, dict) or "schema_version" not in raw:
            raise ManifestError(f"{self.path} is corrupt (no schema_version); refusing to touch it")
        version = raw["schema_version"]
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise ManifestError(
                f"{self.path} has schema_version {version}, newer than this trm_cluster understands "
                f"({SCHEMA_VERSION}); upgrade trm_cluster"
            )
        try:
            data = ManifestData.from_dict(raw)
            check(data)
            check_paths(data)
        except (TypeError, KeyError) as error:
            raise ManifestError(
                f"{self.path} is corrupt (bad field: {printable(str(error))}); refusing to touch it"
            ) from None
        except SchemaError as error:
            raise ManifestError(
                f"{self.path} is corrupt ({printable(str(error))}); refusing to touch it"
            ) from None
        if config_hash(data.config) != data.config_hash:
            raise ManifestError(f"{self.path} is corrupt (config does not match config_hash)")
        return data

    def create(self, data: ManifestData) -> None:
        """Write the first manifest; refuse if a run already lives here."""
        make_private_dirs(self.run_dir)
        with self._locked():
            if self.path.exists():
                raise ManifestError(f"{self.run_dir} already holds a run; use --resume {self.run_dir}")
            self._write(data)

    @contextlib.contextmanager
    def update(self) -> Iterator[ManifestData]:
        """Lock, read, let the caller mutate, write atomically, unlock."""
        with self._locked():
            data = self.read()
            yield data
            self._write(data)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            with self._lock:
                yield
        except filelock.Timeout:
            raise ManifestError(
                f"could not lock {self._lock.lock_file} within {self.lock_timeout_s:.0f} s "
                "(another process holds it; if none is alive, the lock is stale and safe to delete)"
            ) from None

    def _write(self, data: ManifestData) -> None:
        for stale in stale_temp_files(self.path):  # we hold the lock: their writer was killed mid-write
            stale.unlink(missing_ok=True)
        data.config_hash = config_hash(data.config)
        payload = json.dumps(data.to_dict(), indent=2, sort_keys=False) + "\n"
        atomic_write_bytes(self.path, payload.encode())
