"""Uploading a run's offline W&B segments in manifest order, once each (``python -m trm_cluster.sync``).

Why not ``wandb sync RUN/wandb/offline-run-*``: wandb replays same-id files in start-time order from each
node's own clock, and a segment replayed after a later one is shifted to wrong steps on the server, silently;
replaying a file again (``--include-synced``) appends its rows again. So this runs one ``wandb sync`` per
segment in the manifest's order, skips files that carry wandb's own ``.wandb.synced`` marker (the manifest
is never written here) and files that hold only wandb's header (a process killed before wandb-core's first
flush: no run record, nothing to upload), and refuses anything that could upload a partial or out-of-order
segment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import filelock

from trm_cluster.core.wandb_options import api_key_configured
from trm_cluster.rundir.manifest import ManifestData, RunManifest

SYNC_LOCK = "sync.lock"


class SyncError(RuntimeError):
    """A refusal: nothing was uploaded and no W&B file or manifest was touched."""


class SyncFailed(RuntimeError):
    """``wandb sync`` failed for one segment; later segments were not tried (their order matters)."""

    def __init__(self, message: str, output: str) -> None:
        super().__init__(message)
        self.output = output


@dataclass(frozen=True)
class PlannedSegment:
    index: int
    wandb_dir: str | None
    """As recorded in the manifest, relative to the run directory (None: this segment wrote no W&B)."""
    file: Path | None
    start_step: int
    end_step: int | None
    end_reason: str | None
    synced: bool
    header_only: bool = False
    """The file holds no record (see :func:`holds_no_record`): never uploaded."""

    @property
    def pending(self) -> bool:
        return self.file is not None and not self.synced and not self.header_only

    @property
    def action(self) -> str:
        if self.file is None:
            return "no W&B files, skip"
        if self.header_only:
            return "header only, skip"
        return "already synced, skip" if self.synced else "sync"


def header_only_notice(p: PlannedSegment) -> str:
    return f"segment {p.index}: header only, nothing to upload; skipped"


def synced_marker(wandb_file: Path) -> Path:
    """wandb's own marker (``run-ID.wandb.synced``), written by a successful ``wandb sync``."""
    return wandb_file.with_suffix(".wandb.synced")


def started_marker(wandb_file: Path) -> Path:
    """Ours, written before ``wandb sync`` and removed once it succeeded.

    Why: a sync that failed or was interrupted may have uploaded part of the segment, and uploading it
    again would append those rows again; only a person looking at the W&B run can tell.
    """
    return wandb_file.with_suffix(".wandb.trm-sync-started")


def holds_no_record(wandb_file: Path) -> bool:
    """True for a ``.wandb`` file with wandb's header and no whole record (or not even the whole header).

    Why: SIGKILL before wandb-core's first flush leaves such a file; it has no run record, so there is
    nothing to upload, and ``wandb sync`` cannot attribute it to the run.
    """
    from trm_cluster.wandb.files import iter_records  # wandb's protobuf modules: paid only with W&B files

    try:
        return next(iter_records(wandb_file), None) is None
    except (OSError, ValueError) as error:
        raise SyncError(f"cannot read W&B file {wandb_file}: {error}") from error


def plan_sync(run_dir: Path, data: ManifestData) -> list[PlannedSegment]:
    """The run's segments in manifest order, or a SyncError when syncing could upload a wrong picture.

    Refused: W&B disabled; a segment still being written (a partial upload); a recorded ``.wandb`` file
    that is gone; a segment whose earlier sync did not finish (a new one could upload rows twice); an
    unsynced segment before a synced one (it would land shifted, after the later one's steps).
    """
    if data.wandb.mode == "disabled":
        raise SyncError(f"run {data.name} has W&B disabled (--no-wandb): nothing to sync")
    plan: list[PlannedSegment] = []
    for seg in data.segments:
        if seg.end_reason is None and data.status == "running":
            raise SyncError(
                f"segment {seg.index} of run {data.name} is still running; syncing it now would upload a "
                "partial segment: wait until it ends (python -m trm_cluster.status shows it)"
            )
        file = None
        if seg.wandb_dir is not None:
            file = run_dir / seg.wandb_dir / f"run-{data.wandb.run_id}.wandb"
            if not file.is_file():
                raise SyncError(
                    f"segment {seg.index}'s W&B file {file} is missing; refusing to sync around it"
                )
            if started_marker(file).exists() and not synced_marker(file).exists():
                raise SyncError(
                    f"an earlier sync of segment {seg.index} did not finish, so part of it may be on W&B and a "
                    f"new sync would add those rows again: check the run there, then delete {started_marker(file)}"
                )
        plan.append(
            PlannedSegment(
                index=seg.index,
                wandb_dir=seg.wandb_dir,
                file=file,
                start_step=seg.start_step,
                end_step=seg.end_step,
                end_reason=seg.end_reason,
                synced=file is not None and synced_marker(file).exists(),
                header_only=file is not None and holds_no_record(file),
            )
        )
    pending = [p.index for p in plan if p.pending]
    synced = [p.index for p in plan if p.synced]
    if pending and synced and pending[0] < synced[-1]:
        raise SyncError(
            f"segment {pending[0]} is not synced but the later segment {synced[-1]} already is: uploading "
            f"it now would shift its steps on W&B; refusing"
        )
    return plan


def render_plan(
    data: ManifestData, plan: list[PlannedSegment], entity: str | None = None, project: str | None = None
) -> str:
    target = f"project {project or data.wandb.project}" + (f"  entity {entity}" if entity else "")
    lines = [f"run {data.name}  W&B {data.wandb.run_id} ({data.wandb.mode})  {target}"]
    width = max((len(p.wandb_dir or "-") for p in plan), default=1)
    for p in plan:
        steps = f"{p.start_step}->{p.end_step if p.end_step is not None else '?'}"
        lines.append(
            f"  #{p.index:<3} {p.wandb_dir or '-':<{width}}  steps {steps:<12} {p.end_reason or 'open':<9}  {p.action}"
        )
    lines += [header_only_notice(p) for p in plan if p.header_only]
    order = [str(p.index) for p in plan if p.pending]
    lines.append(f"to sync, in this order: {', '.join(order)}" if order else "nothing left to sync")
    return "\n".join(lines)


def wandb_executable() -> str:
    """The ``wandb`` of this interpreter's environment, so the sync runs the wandb the run was written with."""
    beside = Path(sys.executable).parent / "wandb"
    if beside.is_file():
        return str(beside)
    found = shutil.which("wandb")
    if found is None:
        raise SyncError(f"no wandb executable next to {sys.executable} or on PATH")
    return found


_PARTIAL = "part of it may be on W&B: check the run there before deleting its .trm-sync-started marker"


def sync_segment(exe: str, p: PlannedSegment, entity: str | None, project: str | None) -> None:
    """One ``wandb sync --yes DIR``; success is wandb's marker, since wandb exits 0 on "Not authenticated"."""
    assert p.file is not None
    cmd = [exe, "sync", "--yes"]
    cmd += ["--entity", entity] if entity else []
    cmd += ["--project", project] if project else []
    cmd.append(str(p.file.parent))
    started_marker(p.file).touch()
    env = {k: v for k, v in os.environ.items() if not (k.startswith("WANDB_") and v == "")}  # empty crashes
    proc = subprocess.run(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    marked = synced_marker(p.file).exists()
    if proc.returncode != 0 or not marked:
        raise SyncFailed(
            f"wandb sync of segment {p.index} ({p.wandb_dir}) failed (exit {proc.returncode}"
            f"{'' if marked else ', no .synced marker'}); later segments were not synced; {_PARTIAL}",
            proc.stdout,
        )
    started_marker(p.file).unlink()


def sync_run(run_dir: Path, entity: str | None, project: str | None) -> list[int]:
    """Sync every pending segment in manifest order under ``sync.lock``; return the indexes synced.

    Why a lock: two concurrent syncs would both see no marker and upload the same segment twice.
    """
    if not api_key_configured():
        raise SyncError(
            "no W&B API key configured (WANDB_API_KEY or ~/.netrc); run this where you are logged in to "
            "W&B, or use --dry-run"
        )
    exe = wandb_executable()
    try:
        with filelock.FileLock(str(run_dir / SYNC_LOCK), timeout=0):
            plan = plan_sync(run_dir, RunManifest(run_dir).read())  # again: markers may be new since
            done: list[int] = []
            for p in plan:
                if p.header_only:
                    print(header_only_notice(p), flush=True)
                elif p.pending:
                    try:
                        sync_segment(exe, p, entity, project)
                    except KeyboardInterrupt:
                        raise SyncFailed(
                            f"interrupted while syncing segment {p.index} ({p.wandb_dir}); {_PARTIAL}", ""
                        ) from None
                    print(f"synced segment {p.index} ({p.wandb_dir})", flush=True)
                    done.append(p.index)
            return done
    except filelock.Timeout:
        raise SyncError(f"another trm-sync holds {run_dir / SYNC_LOCK}") from None
