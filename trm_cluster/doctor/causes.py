"""The resume doctor's likely causes of a divergence: the resumed process's own warnings, and what the
place and the keys of the first divergence say (most certain first, each with its fix)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trm_cluster.doctor.compare import Verdict

# phrases of the trm_cluster logger's warnings (state/registered.py, runtime/session.py,
# rundir/checkpoints.py)
LOADER_PLAIN = "plain torch DataLoader"
RNG_DRAWN = "the global RNG was drawn from between run.restore()"
REGISTERED_EXTRA = "which this loop does not register"
CHECKPOINT_FALLBACK = "falling back"
UNREGISTERED = re.compile(
    r"run\.restore\(\.\.\.\): (.+?) (?:has|have) state_dict\(\) but (?:is|are) not registered"
)
LOST_ATTRIBUTE = re.compile(
    r"run\.restore\(\.\.\.\): (\S+ \(\w+\)) was (.+?) when the checkpoint was saved but is (.+?) as the loop starts"
)

_LR_METRIC = re.compile(r"(^|[/._-])(lr|learning_rate|learning-rate)([/._-]|$)", re.IGNORECASE)
_LR_STATE = re.compile(r"param_groups\.\d+\.lr$")


@dataclass(frozen=True)
class Cause:
    title: str
    detail: str


def warning_causes(resumed_stderr: str) -> list[Cause]:
    """The resumed process's own warnings (the ``trm_cluster`` logger, on its stderr) that explain a
    divergence, each with its fix."""
    causes: list[Cause] = []
    if LOADER_PLAIN in resumed_stderr:
        causes.append(
            Cause(
                "a plain torch DataLoader (the resumed process warned: " + repr(LOADER_PLAIN) + ")",
                "its position in the epoch (and its workers' seeds) are in no checkpoint, so the resumed "
                "process starts a new pass over the data. Use torchdata.stateful_dataloader."
                "StatefulDataLoader (same arguments) and register it: run.restore(..., data=loader).",
            )
        )
    unregistered = UNREGISTERED.search(resumed_stderr)
    if unregistered:
        causes.append(
            Cause(
                f"state the loop does not register: {unregistered.group(1)} (the resumed process warned)",
                "it has state_dict() but no checkpoint holds it, so the resumed process starts it afresh "
                "(a curriculum back at its first stage makes a new iterator at the first resumed step). "
                "Register it: run.restore(..., name=obj).",
            )
        )
    lost = list(dict.fromkeys(LOST_ATTRIBUTE.findall(resumed_stderr)))
    if lost:
        causes.append(
            Cause(
                "state the loop does not register: "
                + ", ".join(
                    f"{name}, saved as {then}, {now} as the resumed loop starts" for name, then, now in lost
                )
                + " (the resumed process warned)",
                "a plain attribute of the script's own object that no checkpoint restores, so the resumed "
                "process starts it from its first value (a curriculum back at its first stage makes a new "
                "iterator at the first resumed step). Register it: "
                'run.restore(..., name=trm_cluster.attributes(obj, "attribute")); or, where setting it does '
                "more (a curriculum that applies its stage to the dataset), set it from run.step before the loop.",
            )
        )
    if RNG_DRAWN in resumed_stderr:
        causes.append(
            Cause(
                "random numbers drawn between run.restore() and the loop (the resumed process warned: "
                + repr(RNG_DRAWN)
                + ")",
                "run.restore() restores the global python/numpy/torch RNG streams; whatever draws from "
                "them before the first step (building a model, an iter(loader) of a loader without a "
                "generator, a random augmentation set up late) moves the resumed run off the "
                "uninterrupted one. Build everything first and call run.restore() right before the loop.",
            )
        )
    if REGISTERED_EXTRA in resumed_stderr:
        causes.append(
            Cause(
                "the resumed process registers other objects than the one that saved",
                "the checkpoint holds state the resumed loop does not register (it is ignored): register "
                "the same objects, under the same names, in every process.",
            )
        )
    if CHECKPOINT_FALLBACK in resumed_stderr:
        causes.append(
            Cause(
                "the resumed process fell back past a checkpoint",
                "the newest checkpoint was missing or corrupt, so it resumed from an older one; see its "
                "stderr.",
            )
        )
    return causes


def divergence_causes(verdict: Verdict) -> list[Cause]:
    """What the place and the keys of the first divergence say about its cause."""
    first = verdict.first
    if first is None:
        return []
    k = verdict.stop_before(first.step)
    keys = [d.path for d in first.state]
    metric_names = sorted({m.name for m in first.metrics})
    causes: list[Cause] = []
    if first.step <= k:
        causes.append(
            Cause(
                f"the loop is not deterministic: the two runs differ at step {first.step}, before any resume",
                "two uninterrupted processes of the same loop already train differently, so no resume can be "
                "exact. Seed every stream (python, numpy, torch) at the start of the script; look for "
                "time- or hash-dependent choices (PYTHONHASHSEED, iterating a set), unseeded "
                "generators, threads, and torch.use_deterministic_algorithms(True) for nondeterministic "
                "kernels.",
            )
        )
        return causes
    one_sided = [d.path for d in first.state if d.detail.startswith("only in the")]
    if one_sided:
        causes.append(
            Cause(
                "the two runs save different keys: " + _listed(one_sided),
                "the resumed process registers (or its objects hold) other state than the uninterrupted "
                "one; register the same objects in every process, whatever the resume point.",
            )
        )
    if first.step == k + 1:
        what = _listed([f"metric {name}" for name in metric_names] + keys)
        causes.append(
            Cause(
                f"state the resume does not bring back: the runs agree at step {k} and diverge right after "
                f"the resume, at step {k + 1} ({what})",
                "something the step uses is neither saved nor restored, so the resumed process starts it "
                "afresh: an object not registered with run.restore(...) (the resumed process names the "
                "stateful objects of its caller it was not given, above), or a registered object whose "
                "state_dict() leaves out something it uses. Register every such object: run.restore("
                "model=..., optimizer=..., scheduler=..., scaler=..., ema=..., data=..., counters={...}).",
            )
        )
    else:
        causes.append(
            Cause(
                f"the runs agree at step {k} and for {first.step - k - 1} step(s) after the resume, then "
                f"diverge at step {first.step}",
                "state that matters only now and then is not saved or not restored: an epoch boundary "
                "(a sampler's or loader's epoch, a new iterator), a periodic event (an eval, an EMA or "
                "schedule milestone, a curriculum stage), or a counter the loop keeps itself. Run the doctor "
                "with --at closer to that step to see it at the resume.",
            )
        )
    lr_metrics = [name for name in metric_names if _LR_METRIC.search(name)]
    lr_state = [key for key in keys if _LR_STATE.search(key) or _LR_METRIC.search(key.rsplit(".", 1)[-1])]
    if lr_metrics or lr_state:
        causes.append(
            Cause(
                "probably an LR scheduler: " + _listed([f"metric {n}" for n in lr_metrics] + lr_state),
                "the learning rate of the resumed run differs: a scheduler that is not registered starts "
                "its schedule over. Register it: run.restore(..., scheduler=scheduler) (built before the "
                "call), or compute the LR from the step.",
            )
        )
    rng_keys = [key for key in keys if key == "rng" or key.startswith("rng.")]
    if rng_keys:
        causes.append(
            Cause(
                "the global RNG: " + _listed(rng_keys),
                "the global python/numpy/torch streams are drawn from a different number of times in the "
                "resumed process: draws outside the step (between run.restore() and the loop, in a sampler or "
                "augmentation of your own at an epoch boundary). Give such consumers "
                "their own torch.Generator, registered with run.restore(...).",
            )
        )
    data_keys = [key for key in keys if re.match(r"trainer\.(data|loader|sampler|dataloader)\b", key)]
    if data_keys:
        causes.append(
            Cause(
                "the data position: " + _listed(data_keys),
                "the registered data state differs: the loader or sampler does not save or restore "
                "where it is in the epoch. Use a StatefulDataLoader (registered as data=loader) or make "
                "each batch a function of the step.",
            )
        )
    return causes


def _listed(items: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
