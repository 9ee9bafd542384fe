"""One segment of the Trainer-protocol doorway, in the job's process: the workload's trainer driven step by
step through the same :class:`~trm_cluster.runtime.session.Session` as a user's own loop.

Its own module, apart from the job classes in ``scheduler/job.py``, so that what ``submit`` pickles needs
no torch: the command that only submits stays a light process (see docs/performance.md, "What submit
costs"), and only the job's process pays for torch, the session and the workload.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trm_cluster.core.rng import seed_everything
from trm_cluster.core.workload import Evaluates, FollowsTotalSteps, TrainContext, Trainer, load_workload
from trm_cluster.rundir.manifest import RunManifest
from trm_cluster.runtime.plan import SessionPlan
from trm_cluster.runtime.session import Session


def run_trainer_segment(plan: SessionPlan) -> dict[str, Any]:
    """Run one segment; return the run's summary when it completes (a stop raises SegmentEnded)."""
    data = RunManifest(plan.run_dir).read()
    with Session(plan) as run:
        trainer = build_trainer(data.workload, data.config["job"], run)
        run.restore_trainer(trainer)
        if run.total_steps_changed and isinstance(trainer, FollowsTotalSteps):
            trainer.total_steps_changed(*run.total_steps_changed)
        total, eval_every = run.total_steps, run.config.eval_every
        for step in run.steps():
            run.log({f"train/{k}": v for k, v in trainer.train_step(step).items()})
            if eval_every and (step + 1) % eval_every == 0 and step + 1 < total:
                run.log_now(evaluate(trainer, step + 1))
        # a doctor's run ends here: its comparison ends at the last checkpoint, saved before this
        final = {} if data.launch.get("doctor") else evaluate(trainer, run.step)
        if final:
            run.log_now(final)
            if not plan.quiet:
                print("[trm_cluster] eval: " + " ".join(f"{k}={v:.4g}" for k, v in final.items()), flush=True)
    return run.summary


def build_trainer(workload_ref: str, job_config: Mapping[str, Any], run: Session) -> Trainer:
    """Seed every stream with the run's seed, then build the workload's trainer for this run."""
    workload = load_workload(workload_ref)
    config = workload.config_from_dict(job_config)
    seed_everything(run.config.seed)
    context = run.plan.context
    return workload.build(
        config,
        TrainContext(
            seed=run.config.seed,
            total_steps=run.total_steps,
            run_dir=run.run_dir,
            rank=context.global_rank,
            world_size=context.world_size,
            log_every=run.config.log_every,
        ),
    )


def evaluate(trainer: Trainer, step: int) -> dict[str, float]:
    if not isinstance(trainer, Evaluates):
        return {}
    return {f"eval/{k}": float(v) for k, v in trainer.evaluate(step).items()}
