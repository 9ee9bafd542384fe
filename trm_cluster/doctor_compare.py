"""The resume doctor's verdict: two runs' checkpoints compared step by step, and what a divergence means.

Run A ran a loop uninterrupted; run B ran it in one process up to step K and resumed it in another.
Both saved a checkpoint after every step and logged a row after every step. Every checkpoint of B is
compared with A's of the same step: every tensor bit for bit (dtype, shape, bytes), every other value
by type and value (floats by their bits), every key on both sides, and every metric logged by the
resumed process (the journal's rows above step K). Only what must differ between two runs is left out:
:data:`RUN_IDENTITY`, timings (:data:`TIMING_METRICS`) and a global RNG stream that was never seeded
and is never drawn from (:func:`compare_runs`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

RUN_IDENTITY = ("meta.saved_at", "meta.run_uid", "meta.run_name")
"""Checkpoint keys two runs of the same training never share: when it was saved, and which run it is."""

JOURNAL_ROWS = "tracking.journal.rows"
"""The logged rows: compared as metrics, row by row (those the resumed process logged), not as state."""

TIMING_METRICS = ("*_per_s", "*time_s", "*_time", "*elapsed*", "*duration*")
"""Logged metrics that measure the machine, not the training (fnmatch patterns on the metric name):
``trainer/steps_per_s``, a workload's ``train/spectra_per_s`` or ``train/step_time_s``."""

LOADER_PLAIN = "plain torch DataLoader"
LOADER_NO_GENERATOR = "has no generator of its own"
RNG_DRAWN = "the global RNG was drawn from between run.restore()"
REGISTERED_EXTRA = "which this loop does not register"
CHECKPOINT_FALLBACK = "falling back"

_LR_METRIC = re.compile(r"(^|[/._-])(lr|learning_rate|learning-rate)([/._-]|$)", re.IGNORECASE)
_LR_STATE = re.compile(r"param_groups\.\d+\.lr$")


@dataclass(frozen=True)
class Difference:
    path: str
    """A dotted key (``model.0.weight``, ``trainer.optimizer.param_groups.0.lr``)."""
    detail: str


@dataclass(frozen=True)
class MetricDifference:
    name: str
    row_step: int
    uninterrupted: float | None
    """None: the row or the metric is missing on that side."""
    resumed: float | None

    def describe(self) -> str:
        return f"{self.name} at step {self.row_step}: {_number(self.uninterrupted)} (uninterrupted) vs {_number(self.resumed)} (resumed)"


@dataclass
class StepComparison:
    step: int
    state: list[Difference] = field(default_factory=list)
    metrics: list[MetricDifference] = field(default_factory=list)

    @property
    def same(self) -> bool:
        return not self.state and not self.metrics


@dataclass
class Tally:
    tensors: int = 0
    values: int = 0
    metrics: set[tuple[int, str]] = field(default_factory=set)


@dataclass
class Verdict:
    total_steps: int
    resume_at: int
    steps: dict[int, StepComparison]
    """Every step compared: K and those after it (and, when K differs already, those before it)."""
    tally: Tally
    ignored_metrics: list[str]
    """Metric names left out as timings."""
    idle_streams: list[str] = field(default_factory=list)
    """Global RNG streams left out: never seeded (they differ between the runs) and never drawn from."""

    @property
    def exact(self) -> bool:
        return all(comparison.same for comparison in self.steps.values())

    @property
    def first(self) -> StepComparison | None:
        for step in sorted(self.steps):
            if not self.steps[step].same:
                return self.steps[step]
        return None

    @property
    def diverging_after_resume(self) -> list[int]:
        return [s for s, c in sorted(self.steps.items()) if s > self.resume_at and not c.same]


@dataclass(frozen=True)
class Cause:
    title: str
    detail: str


def compare_payloads(
    expected: Any, actual: Any, ignore: Iterable[str] = (), tally: Tally | None = None
) -> list[Difference]:
    """Every difference between two nested states, with its dotted path; ``ignore`` holds fnmatch
    patterns of paths skipped with everything under them."""
    found: list[Difference] = []
    _compare(expected, actual, "", tuple(ignore), found, tally if tally is not None else Tally())
    return found


def _compare(
    a: Any, b: Any, path: str, ignore: tuple[str, ...], found: list[Difference], tally: Tally
) -> None:
    where = path or "<root>"
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        tally.tensors += 1
        if a.dtype != b.dtype or a.shape != b.shape:
            found.append(Difference(where, f"{a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}"))
        elif not torch.equal(_bytes(a), _bytes(b)):
            found.append(Difference(where, _tensor_detail(a, b)))
    elif isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in dict.fromkeys([*a, *b]):
            sub = f"{path}.{key}" if path else str(key)
            if _ignored(sub, ignore):
                continue
            if key not in b:
                found.append(Difference(sub, "only in the uninterrupted run"))
            elif key not in a:
                found.append(Difference(sub, "only in the resumed run"))
            else:
                _compare(a[key], b[key], sub, ignore, found, tally)
    elif isinstance(a, list | tuple) and type(a) is type(b) and _flat(a) and _flat(b) and len(a) == len(b):
        # a list of plain values (an RNG state, a milestone list) is one difference, not one per item
        tally.values += len(a)
        wrong = [
            i
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            if type(x) is not type(y) or not _same_value(x, y)
        ]
        if wrong:
            i = wrong[0]
            found.append(
                Difference(
                    where,
                    f"{len(wrong)} of {len(a)} items differ (first [{i}]: {a[i]!r:.30} vs {b[i]!r:.30})",
                )
            )
    elif isinstance(a, list | tuple) and type(a) is type(b):
        if len(a) != len(b):
            found.append(Difference(where, f"{len(a)} vs {len(b)} items"))
        for index, (x, y) in enumerate(zip(a, b, strict=False)):
            sub = f"{path}.{index}" if path else str(index)
            if not _ignored(sub, ignore):
                _compare(x, y, sub, ignore, found, tally)
    else:
        tally.values += 1
        if type(a) is not type(b):
            found.append(Difference(where, f"{type(a).__name__} {a!r:.60} vs {type(b).__name__} {b!r:.60}"))
        elif not _same_value(a, b):
            found.append(Difference(where, f"{a!r:.60} vs {b!r:.60}"))


def _flat(items: Sequence[Any]) -> bool:
    return all(not isinstance(item, torch.Tensor | Mapping | list | tuple) for item in items)


def _ignored(path: str, ignore: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in ignore)


def _same_value(a: Any, b: Any) -> bool:
    """Floats by their bits (a NaN equals itself, -0.0 is not 0.0); anything else by ``==``."""
    return a.hex() == b.hex() if isinstance(a, float) else bool(a == b)


def _bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def _tensor_detail(a: torch.Tensor, b: torch.Tensor) -> str:
    """How many elements differ in their bits, and by how much at most (floating tensors)."""
    size = a.element_size()
    differing = int((_bytes(a) != _bytes(b)).view(-1, size).any(dim=1).sum()) if size else 0
    detail = f"{differing} of {a.numel()} values differ"
    if a.is_floating_point() and a.numel():
        gap = (a.detach().double() - b.detach().double()).abs().nan_to_num(nan=float("inf")).max()
        detail += f", max |difference| {float(gap):.3g}"
    return detail


def _number(value: float | None) -> str:
    return "missing" if value is None else f"{value:.10g}"


def journal_rows(payload: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
    """A checkpoint's logged rows, by step."""
    journal = payload.get("tracking", {}).get("journal", {})
    rows = journal.get("rows", []) if isinstance(journal, Mapping) else journal
    return {int(row["step"]): dict(row["metrics"]) for row in rows}


def is_timing(name: str, patterns: Sequence[str]) -> bool:
    leaf = name.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(leaf, p) for p in patterns)


def compare_step(
    step: int,
    expected: Mapping[str, Any],
    actual: Mapping[str, Any],
    rows_above: int | None,
    tally: Tally,
    ignore: Sequence[str] = (),
    timing: Sequence[str] = TIMING_METRICS,
    ignored_metrics: set[str] | None = None,
) -> StepComparison:
    """One step's checkpoints: the state, and the rows logged above ``rows_above`` (None: every row)."""
    comparison = StepComparison(step)
    comparison.state = compare_payloads(expected, actual, (*RUN_IDENTITY, JOURNAL_ROWS, *ignore), tally)
    a_rows, b_rows = journal_rows(expected), journal_rows(actual)
    floor = -(10**18) if rows_above is None else rows_above
    for row_step in sorted({s for s in (*a_rows, *b_rows) if s > floor}):
        a_row, b_row = a_rows.get(row_step), b_rows.get(row_step)
        names = dict.fromkeys([*(a_row or {}), *(b_row or {})])
        for name in names:
            if is_timing(name, timing) or _ignored(name, tuple(ignore)):
                if ignored_metrics is not None:
                    ignored_metrics.add(name)
                continue
            tally.metrics.add((row_step, name))
            a_value = None if a_row is None else a_row.get(name)
            b_value = None if b_row is None else b_row.get(name)
            if a_value is None or b_value is None or not _same_value(float(a_value), float(b_value)):
                comparison.metrics.append(
                    MetricDifference(
                        name,
                        row_step,
                        None if a_value is None else float(a_value),
                        None if b_value is None else float(b_value),
                    )
                )
    return comparison


def compare_runs(
    uninterrupted: Mapping[int, Mapping[str, Any]],
    resumed: Mapping[int, Mapping[str, Any]],
    resume_at: int,
    total_steps: int,
    ignore: Sequence[str] = (),
    timing: Sequence[str] = TIMING_METRICS,
) -> Verdict:
    """Compare the checkpoints of step K and of every step after it; when step K differs already (the
    loop is not deterministic even without a resume), also those before it, to find where that starts.

    A global RNG stream that the loop never draws from (the same in every checkpoint of each run) but
    that differs between the runs was never seeded, and cannot change the training: it is left out
    (:attr:`Verdict.idle_streams`) rather than reported as a divergence.
    """
    tally = Tally()
    ignored: set[str] = set()
    steps: dict[int, StepComparison] = {}
    streams: dict[str, tuple[set[str], set[str]]] = {}

    def one(step: int, rows_above: int | None) -> None:
        a, b = uninterrupted[step], resumed[step]
        for side, payload in enumerate((a, b)):
            for name, value in dict(payload.get("rng", {})).items():
                streams.setdefault(str(name), (set(), set()))[side].add(_digest(value))
        steps[step] = compare_step(step, a, b, rows_above, tally, ignore, timing, ignored)

    # The resumed process logged only the rows above the last row logged by step K.
    rows_at_k = journal_rows(uninterrupted[resume_at])
    rows_above = max(rows_at_k) if rows_at_k else None
    one(resume_at, None)
    for step in range(resume_at + 1, total_steps + 1):
        one(step, rows_above)
    idle = sorted(n for n, (a, b) in streams.items() if len(a) == len(b) == 1 and a != b)
    _drop_streams(steps.values(), idle)
    if not steps[resume_at].same:
        for step in range(1, resume_at):
            one(step, None)
        _drop_streams(steps.values(), idle)
    return Verdict(total_steps, resume_at, dict(sorted(steps.items())), tally, sorted(ignored), idle)


def _drop_streams(comparisons: Iterable[StepComparison], idle: Sequence[str]) -> None:
    prefixes = tuple(f"rng.{name}" for name in idle)
    if not prefixes:
        return
    for comparison in comparisons:
        comparison.state = [
            d
            for d in comparison.state
            if not any(d.path == p or d.path.startswith(p + ".") for p in prefixes)
        ]


def _digest(value: Any) -> str:
    """A digest of a nested value: tensors by dtype, shape and bytes, the rest by repr."""
    digest = hashlib.sha256()

    def feed(item: Any) -> None:
        if isinstance(item, torch.Tensor):
            digest.update(f"T{item.dtype}{list(item.shape)}".encode())
            digest.update(_bytes(item).numpy().tobytes())
        elif isinstance(item, Mapping):
            digest.update(b"{")
            for key, sub in item.items():
                digest.update(repr(key).encode())
                feed(sub)
            digest.update(b"}")
        elif isinstance(item, list | tuple):
            digest.update(b"[")
            for sub in item:
                feed(sub)
            digest.update(b"]")
        else:
            digest.update(repr(item).encode() + b";")

    feed(value)
    return digest.hexdigest()


# -- what a divergence means -------------------------------------------------------------------------


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
    if LOADER_NO_GENERATOR in resumed_stderr:
        causes.append(
            Cause(
                "a DataLoader without its own generator (the resumed process warned: "
                + repr(LOADER_NO_GENERATOR)
                + ")",
                "each new iterator draws its seed from the global torch RNG, and a resumed process makes "
                "one iterator more than an uninterrupted one, which shifts every later random number. "
                "Pass generator=torch.Generator().manual_seed(seed) to the DataLoader.",
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
    k = verdict.resume_at
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
                f"state the loop does not register with run.restore(...): the runs agree at step {k} and "
                f"diverge right after the resume, at step {k + 1} ({what})",
                "something that changes during training is neither saved nor restored, so the resumed "
                "process starts it afresh. Register every such object: run.restore(model=..., "
                "optimizer=..., scheduler=..., scaler=..., ema=..., data=..., counters={...}).",
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
                "resumed process: draws outside the step (between run.restore() and the loop, in a new "
                "iterator of a DataLoader without a generator, at an epoch boundary). Give such consumers "
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
