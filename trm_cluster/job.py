"""The resumable training job: the whole path of a requeue, top to bottom.

One process runs one *segment* of a run::

    stop signals deferred -> manifest read, segment opened -> trainer built, newest valid checkpoint
    loaded, RNG restored -> W&B resumed above the watermark -> train step by step ->
    [signal recorded] -> step boundary -> full state saved atomically -> checkpoint published ->
    W&B finished as preempted -> segment closed with its reason -> submitit's requeue (exit)

The object submitit pickles (:class:`TrainingJob`) carries only the run directory and a few flags:
everything else comes back from the manifest and the checkpoint files, so a Slurm-initiated requeue
that reruns an old pickle still resumes from the newest state on disk.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import sys
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit

from .checkpoint import CheckpointStore, capture
from .config import RunConfig
from .digest import weights_sha256
from .environment import JobContext
from .manifest import ManifestData, ManifestError, RunManifest, Segment, utc_now
from .signals import StopRequest, StopSignals, preempt_signal
from .state import capture_rng, restore_rng, seed_everything
from .tracking import NullTracker, Tracker, WandbTracker
from .workload import Evaluates, TrainContext, Trainer, load_workload

log = logging.getLogger(__name__)


class RequeueRefused(RuntimeError):
    """The run stopped at a time limit with its timeout requeue budget spent."""


class JobCancelled(RuntimeError):
    """The scheduler cancelled the job (scancel): saved, not requeued."""


@dataclass(frozen=True)
class SegmentOutcome:
    reason: str
    """completed, timeout, preempted or cancelled."""
    step: int
    requeue: bool
    summary: dict[str, Any] = field(default_factory=dict)
    rehearsed: bool = False
    """The stop came from the preemption rehearsal's own signal."""


class TrainingJob(submitit.helpers.Checkpointable):
    """What submitit runs (and reruns after every requeue) for one run directory."""

    def __init__(
        self, run_dir: Path, wandb_resume: str = "allow", preempt_at: Sequence[int] = (), quiet: bool = False
    ) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.wandb_resume = wandb_resume
        self.preempt_at = tuple(preempt_at)
        self.quiet = quiet

    def __call__(self) -> dict[str, Any]:
        _configure_logging()
        context = JobContext.detect()
        while True:
            outcome = run_segment(self.run_dir, context, self.wandb_resume, self.preempt_at, self.quiet)
            if outcome.rehearsed:  # the requeued process (this object, pickled again) rehearses the rest
                self.preempt_at = self.preempt_at[1:]
            if outcome.reason == "completed":
                return outcome.summary
            if outcome.reason == "cancelled":
                raise JobCancelled(
                    f"cancelled at step {outcome.step}; the state is saved, resume with --resume"
                )
            if not outcome.requeue:
                raise RequeueRefused(
                    f"stopped at step {outcome.step} ({outcome.reason}); the timeout requeue budget is spent. "
                    f"Continue with: python -m trm_cluster.submit --resume {self.run_dir}"
                )
            if context.executor in ("debug", "process"):
                # No scheduler to requeue us: rehearse the requeue in-process, from disk, as a new segment.
                context = JobContext.detect()
                continue
            _say(
                self.quiet,
                "[trm_cluster] state saved; handing over to submitit's requeue "
                "(its own 'timed-out'/'preempted' log line is a wall-time guess, the manifest has the reason)",
            )
            _hand_over_to_submitit()

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Cheap by design: the state is already on disk when submitit calls this."""
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def run_segment(
    run_dir: Path,
    context: JobContext,
    wandb_resume: str = "allow",
    preempt_at: Sequence[int] = (),
    quiet: bool = False,
) -> SegmentOutcome:
    """Train one process's share of the run and leave disk and manifest consistent however it ends."""
    signals = StopSignals()
    signals.install()  # from here on, USR2/TERM are only recorded; we act at step boundaries
    manifest = RunManifest(run_dir)
    try:
        data = manifest.read()
        segment = _open_segment(manifest, context)
    except BaseException:
        signals.restore()
        raise

    tracker: Tracker = NullTracker(data.wandb.last_step)
    injector = _PreemptionInjector(preempt_at, start_step=data.step)
    step = data.step
    try:
        run_cfg = RunConfig(**data.config["run"])
        store = CheckpointStore(manifest, keep_last=run_cfg.keep_checkpoints)
        store.remove_orphans()
        trainer, step, journal = _build_and_restore(data, run_cfg, store, run_dir, context)
        _say(
            quiet, f"[trm_cluster] segment {segment.index}: step {step}/{data.total_steps} on {context.host}"
        )
        saved_step = step if step > 0 else -1
        injector = _PreemptionInjector(preempt_at, start_step=step)
        if data.wandb.mode != "disabled" and context.is_rank_zero:
            tracker = WandbTracker.start(
                data, run_dir, resume=wandb_resume, quiet=quiet, journal=journal, resume_step=step
            )
            _record_wandb_started(manifest, segment.index, tracker)
        injector.start()
        total = data.total_steps
        started, started_step = time.time(), step
        while step < total and signals.request is None:
            metrics = trainer.train_step(step)
            step += 1
            injector.reached(step)
            if step % run_cfg.log_every == 0 or step == total:
                tracker.log(step, _with_progress(metrics, step, started, started_step))
                _say(quiet, _progress_line(step, total, metrics))
            if run_cfg.eval_every and step % run_cfg.eval_every == 0 and step < total:
                tracker.log(step, _evaluate(trainer, step))
            if run_cfg.checkpoint_every and step % run_cfg.checkpoint_every == 0:
                _save(store, trainer, step, data, tracker)
                saved_step = step
        injector.stop()

        if signals.request is None:
            final_eval = _evaluate(trainer, step)
            if final_eval:
                tracker.log(step, final_eval)
                _say(quiet, "[trm_cluster] eval: " + _format(final_eval))
        if saved_step != step:
            _save(store, trainer, step, data, tracker)
        request = signals.request  # read once: a signal during the final save still means "stop"
        reason = "completed" if step >= total else _stop_reason(context, request, data)
        tracker.finish(preempting=reason in ("timeout", "preempted"), failed=reason == "cancelled")
        requeue = _close_segment(manifest, segment.index, step, reason, request, tracker)
        summary = _summary(manifest, store) if reason == "completed" else {}
        _say(quiet, f"[trm_cluster] segment {segment.index} ended at step {step}: {reason}")
        return SegmentOutcome(reason, step, requeue, summary, rehearsed=injector.fired)
    except BaseException as error:
        injector.stop()
        tracker.finish(preempting=False, failed=True)
        killed = isinstance(error, KeyboardInterrupt | SystemExit)
        _fail_segment(manifest, segment.index, step, "killed" if killed else "failed", error)
        raise
    finally:
        signals.restore()


def _hand_over_to_submitit() -> None:
    """Call submitit's own handler now that the state is durable: it calls our cheap ``checkpoint()``,
    dumps the pickle, runs ``scontrol requeue`` (local: exit code 144) and exits."""
    handler = signal.getsignal(preempt_signal())
    if not callable(handler):
        raise RuntimeError("no submitit signal handler installed; is this running under submitit?")
    handler(preempt_signal(), None)
    sys.exit(-1)  # submitit's handler exits itself; this only guards against one that returns


def _open_segment(manifest: RunManifest, context: JobContext) -> Segment:
    with manifest.update() as data:
        dangling = data.open_segment
        if dangling is not None:
            _refuse_if_alive(dangling, context)
            dangling.end_time = utc_now()
            dangling.end_step = data.step
            dangling.end_reason = "killed"
            dangling.message = "process ended without closing its segment (SIGKILL, OOM, node failure?)"
        segment = Segment(
            index=len(data.segments),
            job_id=context.job_id,
            array_index=context.array_index,
            restart_count=context.restart_count,
            host=context.host,
            pid=context.pid,
            executor=context.executor,
            start_time=utc_now(),
            start_step=data.step,
        )
        data.segments.append(segment)
        data.status = "running"
    return segment


def _refuse_if_alive(segment: Segment, context: JobContext) -> None:
    if segment.host != context.host or segment.pid == context.pid:
        return
    try:
        os.kill(segment.pid, 0)
    except ProcessLookupError:
        return
    except PermissionError:
        pass
    raise ManifestError(
        f"run is already being trained by pid {segment.pid} on {segment.host} (segment {segment.index}); "
        "refusing to train it twice"
    )


def _build_and_restore(
    data: ManifestData, run_cfg: RunConfig, store: CheckpointStore, run_dir: Path, context: JobContext
) -> tuple[Trainer, int, list[dict[str, Any]]]:
    """Build the trainer and load the newest valid checkpoint; also return its W&B row journal."""
    workload = load_workload(data.workload)
    job_cfg = workload.config_from_dict(data.config["job"])
    seed_everything(run_cfg.seed)
    trainer = workload.build(
        job_cfg,
        TrainContext(
            seed=run_cfg.seed,
            total_steps=data.total_steps,
            run_dir=run_dir,
            rank=context.global_rank,
            world_size=context.world_size,
        ),
    )
    loaded = store.load_latest(data.run_uid)
    if loaded is None:
        return trainer, 0, []
    payload = loaded.payload
    trainer.load_state_dict({**payload["trainer"], "model": payload["model"]})
    restore_rng(payload["rng"])  # last: building and loading must not consume the restored streams
    return trainer, int(payload["meta"]["step"]), list(payload.get("tracking", {}).get("journal", []))


def _save(store: CheckpointStore, trainer: Trainer, step: int, data: ManifestData, tracker: Tracker) -> None:
    state = capture(trainer.state_dict())
    if "model" not in state:
        raise TypeError("Trainer.state_dict() must hold the model weights under 'model'")
    model = state.pop("model")
    payload = {
        "model": model,
        "trainer": state,
        "rng": capture(capture_rng()),
        "tracking": {"journal": tracker.journal()},
        "meta": {
            "format": 1,
            "step": step,
            "run_uid": data.run_uid,
            "run_name": data.name,
            "workload": data.workload,
            "config": data.config,
            "saved_at": utc_now(),
        },
    }
    store.save(step, payload)


def _stop_reason(context: JobContext, request: StopRequest | None, data: ManifestData) -> str:
    if request is None:
        return "preempted"
    signal_delay_s = float(data.launch.get("signal_delay_s", 120))
    return context.classify(request, signal_delay_s)


def _close_segment(
    manifest: RunManifest,
    index: int,
    step: int,
    reason: str,
    request: StopRequest | None,
    tracker: Tracker,
) -> bool:
    """Close the segment; count the requeue; return whether a requeue is allowed."""
    with manifest.update() as data:
        segment = data.segments[index]
        segment.end_time, segment.end_step, segment.end_reason = utc_now(), step, reason
        segment.signal = request.name if request else None
        data.wandb.last_step = max(data.wandb.last_step, tracker.durable_step)
        if reason == "completed":
            data.status = "completed"
            return False
        if reason == "cancelled":
            segment.end_reason = "killed"
            segment.message = (
                "cancelled (SIGTERM that was neither a time limit nor a preemption); not requeued"
            )
            data.status = "failed"
            return False
        data.requeues[reason] = data.requeues.get(reason, 0) + 1
        timeouts = data.requeues["timeout"] - data.timeouts_at_submit
        allowed = reason == "preempted" or timeouts <= data.max_requeues
        data.status = "requeued" if allowed else "failed"
        if not allowed:
            segment.message = (
                f"timeout requeue budget spent ({data.max_requeues} requeues since the last submit)"
            )
        return allowed


def _fail_segment(manifest: RunManifest, index: int, step: int, reason: str, error: BaseException) -> None:
    try:
        with manifest.update() as data:
            segment = data.segments[index]
            if segment.end_reason is None:
                segment.end_time, segment.end_step, segment.end_reason = utc_now(), data.step, reason
                segment.message = "".join(traceback.format_exception_only(error)).strip()[-2000:]
            if data.status != "requeued":
                data.status = "failed"
    except Exception as manifest_error:  # the original error matters more
        log.error("could not record the failure in the manifest: %s", manifest_error)


def _record_wandb_started(manifest: RunManifest, index: int, tracker: Tracker) -> None:
    with manifest.update() as data:
        data.wandb.started = True
        data.segments[index].wandb_dir = tracker.segment_dir


def _summary(manifest: RunManifest, store: CheckpointStore) -> dict[str, Any]:
    data = manifest.read()
    latest = data.checkpoints[-1]
    payload = store.load_latest(data.run_uid)
    return {
        "status": data.status,
        "step": latest.step,
        "run_id": data.wandb.run_id,
        "checkpoint": latest.file,
        "weights_sha256": weights_sha256(payload.payload["model"]) if payload else None,
    }


def _evaluate(trainer: Trainer, step: int) -> dict[str, float]:
    if not isinstance(trainer, Evaluates):
        return {}
    return {f"eval/{k}": float(v) for k, v in trainer.evaluate(step).items()}


def _with_progress(
    metrics: Mapping[str, float], step: int, started: float, started_step: int
) -> dict[str, float]:
    elapsed = max(time.time() - started, 1e-9)
    return {
        **{f"train/{k}": float(v) for k, v in metrics.items()},
        "trainer/step": float(step),
        "trainer/steps_per_s": (step - started_step) / elapsed,
    }


def _progress_line(step: int, total: int, metrics: Mapping[str, float]) -> str:
    return f"[trm_cluster] step {step}/{total} " + _format(metrics)


def _format(metrics: Mapping[str, float]) -> str:
    return " ".join(f"{k}={float(v):.4g}" for k, v in list(metrics.items())[:8])


def _say(quiet: bool, line: str) -> None:
    if not quiet:
        print(line, flush=True)


def _configure_logging() -> None:
    """Our warnings (checkpoint fallbacks, W&B trouble) go to the job's stderr log, once."""
    package = logging.getLogger("trm_cluster")
    if not package.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        package.addHandler(handler)
        package.setLevel(logging.INFO)
        package.propagate = False


class _PreemptionInjector:
    """Preemption rehearsal: send ourselves the real preemption signal once the run passes a given step.

    A thread sends it, so it lands asynchronously, mid-step, as a scheduler's signal would. One per
    process: it fires at the first rehearsal step, or right after the resume step if an earlier signal
    overshot it, and the training loop never gets more than one step past that step without it.
    """

    def __init__(self, steps: Sequence[int], start_step: int) -> None:
        self._target = max(steps[0], start_step + 1) if steps else None
        self._reached = threading.Event()
        self._done = threading.Event()
        self._sent = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def fired(self) -> bool:
        return self._sent.is_set()

    def start(self) -> None:
        if self._target is not None:
            self._thread = threading.Thread(target=self._run, name="preemption-injector", daemon=True)
            self._thread.start()

    def reached(self, step: int) -> None:
        if self._target is None or step < self._target:
            return
        self._reached.set()
        if step > self._target:
            self._sent.wait(timeout=10)  # bound the overshoot to one step, however busy the machine

    def stop(self) -> None:
        self._done.set()
        self._reached.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        self._reached.wait()
        if self._done.is_set() or self._target is None:
            return
        time.sleep(random.Random(self._target).uniform(0.0, 0.005))
        os.kill(os.getpid(), preempt_signal())
        self._sent.set()
