"""One W&B run across every process of a training run.

The run id lives in the manifest (written before the first ``wandb.init``); every process resumes it
with ``resume="allow"`` (or ``"must"`` when asked) and logs with ``step=`` the global step. Steps at or
below the watermark (the highest step already on disk, from the manifest and from the ``.wandb``
files earlier processes left) are never logged again, so offline segments synced later hold no
duplicated or shifted points.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from trm_cluster.core.job_context import seconds_from_env
from trm_cluster.rundir.manifest import ManifestData, Segment, WandbInfo
from trm_cluster.rundir.script_config import wandb_config
from trm_cluster.wandb.guard import wandb_init
from trm_cluster.wandb.writers import kill_writers, wait_for_writers

log = logging.getLogger(__name__)


def drop_empty_wandb_env() -> list[str]:
    """wandb crashes on empty WANDB_* values (e.g. WANDB_MODE=""); unset them, never export them."""
    empty = [k for k, v in os.environ.items() if k.startswith("WANDB_") and v == ""]
    for key in empty:
        del os.environ[key]
    return empty


def change_annotations(data: ManifestData) -> dict[str, Any]:
    """W&B config entries that say which settings were changed on a resume, and how.

    A change of ``job.curriculum.x`` gives ``curriculum_modified: true`` and a ``curriculum_change``
    description, so a chart reader sees that the run was not trained under one config throughout.
    """
    notes: dict[str, Any] = {}
    for change in data.config_changes:
        for key, (old, new) in change.changes.items():
            parts = key.split(".")
            field = parts[1] if parts[0] == "job" and len(parts) > 1 else parts[-1]
            notes[f"{field}_modified"] = True
            described = f"{key}: {old!r} -> {new!r} at step {change.at_step}"
            previous = notes.get(f"{field}_change")
            notes[f"{field}_change"] = f"{previous}; {described}" if previous else described
    if notes:
        notes["config_modified"] = True
    origin = data.forked_from
    if origin is not None:  # a fork: which run and step it branched from (its changes are listed above)
        notes["forked_from"] = {"run": origin.name, "run_id": origin.wandb_run_id, "step": origin.step,
                                "run_dir": origin.run_dir, "changes": sorted(origin.changes)}  # fmt: skip
    return notes


JOURNAL_ROWS = 1000
"""Rows kept for replay. W&B writes its .wandb file only every ~15 s, so a SIGKILLed process loses
the rows logged since its last flush, though its checkpoint may be newer. Each checkpoint therefore
carries the last rows logged; the next process re-logs those above what reached the disk."""


class Tracker(Protocol):
    durable_step: int
    """Highest W&B step known to be on disk once finish() returned (the manifest's watermark)."""

    def log(self, step: int, metrics: Mapping[str, float]) -> None: ...

    def journal(self) -> dict[str, Any]: ...

    def finish(self, preempting: bool, failed: bool = False) -> None: ...

    @property
    def run(self) -> Any: ...

    @property
    def segment_dir(self) -> str | None: ...


class RowJournal:
    """The last :data:`JOURNAL_ROWS` rows logged, and the step above which it holds every one."""

    def __init__(self, complete_above: int) -> None:
        self.rows: dict[int, dict[str, float]] = {}
        self.complete_above = complete_above

    def add(self, step: int, metrics: Mapping[str, float]) -> None:
        self.rows.setdefault(step, {}).update(metrics)
        while len(self.rows) > JOURNAL_ROWS:
            dropped = next(iter(self.rows))
            del self.rows[dropped]
            self.complete_above = max(self.complete_above, dropped)

    def state(self) -> dict[str, Any]:
        rows = [{"step": step, "metrics": dict(metrics)} for step, metrics in self.rows.items()]
        return {"rows": rows, "complete_above": self.complete_above}

    @classmethod
    def restored(cls, state: Mapping[str, Any]) -> RowJournal:
        journal = cls(int(state.get("complete_above", -1)))
        for row in state.get("rows", []):
            journal.add(int(row["step"]), row["metrics"])
        return journal


class NullTracker:
    """W&B disabled (or a rank other than 0): logs nothing, but journals the rows, so a checkpoint
    still carries the run's recent metrics (the resume doctor compares them)."""

    def __init__(self, durable_step: int = -1, journal: Mapping[str, Any] | None = None) -> None:
        self.durable_step = durable_step
        self._journal = RowJournal.restored(journal) if journal else RowJournal(durable_step)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        if step > self.durable_step:
            self._journal.add(step, metrics)

    def journal(self) -> dict[str, Any]:
        return self._journal.state()

    @property
    def run(self) -> Any:
        return None

    def finish(self, preempting: bool, failed: bool = False) -> None:
        pass

    @property
    def segment_dir(self) -> str | None:
        return None


FINISH_TIMEOUT_ENV = "TRM_CLUSTER_WANDB_FINISH_TIMEOUT_S"


def finish_timeout_s(default: float = 60.0) -> float:
    """The bound on ``run.finish()``; a value that is not a positive number falls back to the default."""
    value = seconds_from_env(FINISH_TIMEOUT_ENV, default)
    if value is None:
        raw = os.environ.get(FINISH_TIMEOUT_ENV)
        log.warning("%s=%r is not a positive number of seconds; using %.0f", FINISH_TIMEOUT_ENV, raw, default)
        return default
    return value


def _forget_wandb_service() -> None:
    """After killing our wandb-core, drop wandb's handle on it so exit (or a next in-process run) cannot
    wait on a dead service."""
    import wandb

    try:
        wandb.teardown()
    except Exception as error:  # expected: the service it says goodbye to is gone
        log.debug("W&B teardown after a killed wandb-core: %s", error)


def _wait_for_killed_writer(previous: Segment | None) -> None:
    """A killed previous process (segment never closed) may have left its wandb-core flushing here."""
    if previous is None or previous.host != socket.gethostname() or previous.pid == os.getpid():
        return
    stragglers = wait_for_writers([previous.pid])
    if stragglers:
        log.warning("wandb-core %s of killed pid %d still writes; steps may repeat", stragglers, previous.pid)


class WandbTracker:
    """The W&B run of one process, bound to the manifest's run id and watermark."""

    def __init__(self, run: Any, watermark: int, run_dir: Path) -> None:
        self._run = run
        self.watermark = watermark
        self.durable_step = watermark
        self._last_logged = watermark
        self._broken = False
        self._run_dir = run_dir
        self._journal = RowJournal(watermark)
        self.skipped = 0
        self.replayed = 0

    @classmethod
    def begin(
        cls,
        data: ManifestData,
        run_dir: Path,
        resume: str = "allow",
        quiet: bool = False,
        killed: Segment | None = None,
    ) -> WandbTracker:
        """The watermark (from the manifest and the ``.wandb`` files, once a killed writer is gone), then
        ``wandb.init``: what needs no checkpoint, so it may run while one loads (:class:`WandbStart`)."""
        import wandb

        drop_empty_wandb_env()
        info: WandbInfo = data.wandb
        _wait_for_killed_writer(killed)
        from trm_cluster.wandb import files as wandb_files  # imports wandb: not in a run with W&B disabled

        watermark = max(info.last_step, wandb_files.max_logged_step(wandb_files.find_segments(run_dir)) or -1)
        word = "Resuming" if info.started else "Starting new"
        print(f"{word} W&B run: {info.run_id}", flush=True)
        run = wandb_init(
            **info.init_arguments(),
            resume=resume,
            name=data.name,
            dir=str(run_dir),
            config=wandb_config(data),
            settings=wandb.Settings(console="off", quiet=quiet),
        )
        return cls(run, watermark, run_dir)

    def resumed(
        self, data: ManifestData, journal: Mapping[str, Any] | Sequence[Mapping[str, Any]], resume_step: int
    ) -> None:
        """Once the checkpoint is restored: the config changes noted (a world-size change is recorded by
        the restore) and the checkpoint's journal replayed above the watermark."""
        notes = change_annotations(data)
        if notes:
            self._run.config.update(notes, allow_val_change=True)
        self._replay(journal, resume_step)

    def _replay(self, journal: Mapping[str, Any] | Sequence[Mapping[str, Any]], resume_step: int) -> None:
        """Re-log the checkpoint's rows that an earlier process logged but never got onto disk.

        ``journal`` is ``{"rows": [...], "complete_above": N}`` (older checkpoints: the bare row list,
        whose completeness is unknown). Rows can be lost only when the watermark lies below the step
        above which the journal is complete; a step that was never logged (``log_every > 1``) is no loss.
        """
        if isinstance(journal, Mapping):
            raw_rows, complete_above = journal.get("rows", []), int(journal.get("complete_above", -1))
        else:
            raw_rows, complete_above = journal, -1
        rows = sorted((int(r["step"]), r["metrics"]) for r in raw_rows if int(r["step"]) <= resume_step)
        missing = [(step, metrics) for step, metrics in rows if step > self.watermark]
        if complete_above > self.watermark:
            log.warning("W&B steps %d..%d may be lost: above what reached the disk, older than the "
                        "checkpoint's journal", self.watermark + 1, complete_above)  # fmt: skip
            self._journal.complete_above = complete_above
        for step, metrics in missing:
            self.log(step, metrics)
        self.replayed = len(missing)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Log one row; a W&B failure never stops training (the row stays in the journal for replay)."""
        if step <= self.watermark:
            self.skipped += 1  # an earlier process already put this step on disk
            return
        self._journal.add(step, metrics)
        if self._broken or self._run is None:
            return
        try:
            self._run.log(dict(metrics), step=step)
        except Exception as error:  # Slurm's SIGTERM reaches wandb-core too, which then exits at once
            self._broken = True
            log.warning("W&B stopped accepting rows at step %d (%s); training goes on, the rows are "
                        "kept in the checkpoint's journal for the next process", step, error)  # fmt: skip
            return
        self._last_logged = max(self._last_logged, step)

    def journal(self) -> dict[str, Any]:
        """What a checkpoint carries for the next process: recent rows, and above which step they are complete."""
        return self._journal.state()

    @property
    def run(self) -> Any:
        """The wandb Run of this process (None once finished): for media, define_metric, watch."""
        return self._run

    def finish(self, preempting: bool, failed: bool = False) -> None:
        """Flush and close; a preempted segment is marked so W&B shows it as preempted, not crashed.

        Bounded (``TRM_CLUSTER_WANDB_FINISH_TIMEOUT_S``, default 60 s): a wandb-core that hangs (a stalled
        upload, a stopped process) must not hold up the requeue until the scheduler kills the job. It is
        then killed; its rows are in the checkpoint's journal and the next process re-logs them.
        """
        if self._run is None:
            return
        run, self._run = self._run, None
        errors: list[Exception] = []

        def close() -> None:
            try:
                if preempting:
                    run.mark_preempting()
                run.finish(exit_code=1 if preempting or failed else 0)
            except Exception as error:  # wandb-core already gone (SIGTERM): only the .wandb file knows
                errors.append(error)

        closer = threading.Thread(target=close, name="wandb-finish", daemon=True)
        closer.start()
        bound = finish_timeout_s()
        closer.join(bound)
        if closer.is_alive():
            killed = kill_writers([os.getpid()])
            log.warning("W&B finish did not return within %g s; killed wandb-core %s and going on (the "
                        "rows are in the checkpoint journal)", bound, killed)  # fmt: skip
            closer.join(10)
            _forget_wandb_service()
            return
        if errors:
            log.warning("W&B finish failed: %s", errors[0])
            return
        if not self._broken:
            self.durable_step = self._last_logged

    @property
    def segment_dir(self) -> str | None:
        """The offline-run-*/run-* folder this process writes, relative to the run directory."""
        try:
            return str(Path(self._run.dir).parent.relative_to(self._run_dir))
        except (ValueError, AttributeError):
            return None


def resumed_tracker(tracker: Tracker, data: ManifestData, journal: Any, step: int) -> Tracker:
    """After the restore: W&B's run with the checkpoint's journal replayed above the watermark, or (no
    W&B) a journal that still carries every row on, for the doctor and for status."""
    if isinstance(tracker, WandbTracker):
        tracker.resumed(data, journal, step)
        return tracker
    return NullTracker(data.wandb.last_step, journal if isinstance(journal, Mapping) else None)


SERIAL_INIT_ENV = "TRM_CLUSTER_SERIAL_WANDB_INIT"
"""Benchmark seam: "1" makes :class:`WandbStart` wait for ``wandb.init`` at once (the serial start that
benchmarks/bench_wandb_overlap.py compares against)."""


class WandbStart:
    """:meth:`WandbTracker.begin` on a thread of its own, started before the checkpoint loads.

    Why: a resumed process waits for ``wandb.init`` (a second or more: the wandb-core service starts,
    the run resumes) and for its checkpoint's read, hash and unpickle; neither needs the other. The
    session joins it before the RNG streams are restored, so nothing W&B does in its thread can
    touch them; the journal is replayed after the restore, on the training thread.
    """

    def __init__(
        self, data: ManifestData, run_dir: Path, resume: str, quiet: bool, killed: Segment | None
    ) -> None:
        self._tracker: WandbTracker | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._begin, args=(data, run_dir, resume, quiet, killed), name="trm-cluster-wandb-init"
        )
        self._thread.start()
        if os.environ.get(SERIAL_INIT_ENV) == "1":
            self._thread.join()

    def _begin(
        self, data: ManifestData, run_dir: Path, resume: str, quiet: bool, killed: Segment | None
    ) -> None:
        try:
            self._tracker = WandbTracker.begin(data, run_dir, resume, quiet, killed)
        except BaseException as error:  # handed to the training thread by join()
            self._error = error

    def join(self) -> WandbTracker:
        """The started tracker; ``wandb.init``'s error, raised here on the training thread."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._tracker is not None
        return self._tracker

    def abandon(self) -> None:
        """A failing process: wait for the init and finish its run as failed; never raises."""
        try:
            self.join().finish(preempting=False, failed=True)
        except Exception as error:
            log.warning("the W&B run started for this process could not be finished: %s", error)
