"""The resume doctor's verdict: two runs' checkpoints compared step by step (the causes of a divergence
are doctor/causes.py's).

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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from trm_cluster.state.loader_state import FORMAT as LOADER_FORMAT
from trm_cluster.state.loader_state import IDLE_COUNTERS
from trm_cluster.state.registered import WATCHED

RUN_IDENTITY = ("meta.saved_at", "meta.run_uid", "meta.run_name")
"""Checkpoint keys two runs of the same training never share: when it was saved, and which run it is."""

JOURNAL_ROWS = "tracking.journal.rows"
"""The logged rows: compared as metrics, row by row (those the resumed process logged), not as state."""

TIMING_METRICS = ("*_per_s", "*time_s", "*_time", "*elapsed*", "*duration*")
"""Logged metrics that measure the machine, not the training (fnmatch patterns on the metric name):
``trainer/steps_per_s``, a workload's ``train/spectra_per_s`` or ``train/step_time_s``."""


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
    stops: tuple[int, ...]
    """The steps run B was stopped after and resumed, in order."""
    steps: dict[int, StepComparison]
    """Every step compared: K and those after it (and, when K differs already, those before it)."""
    tally: Tally
    ignored_metrics: list[str]
    """Metric names left out as timings."""
    idle_streams: list[str] = field(default_factory=list)
    """Global RNG streams left out: never seeded (they differ between the runs) and never drawn from."""
    idle_counters: list[str] = field(default_factory=list)
    """Loader sampler counters left out: an iterable dataset's, read by nothing (idle_loader_counters)."""

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
    def resume_at(self) -> int:
        """The first stop: the steps after it are the resumed ones."""
        return self.stops[0]

    def stop_before(self, step: int) -> int:
        """The last stop before ``step`` (the first stop for a step at or before it)."""
        return max((s for s in self.stops if s < step), default=self.stops[0])

    @property
    def diverging_after_resume(self) -> list[int]:
        return [s for s, c in sorted(self.steps.items()) if s > self.resume_at and not c.same]

    def first_by_kind(self) -> dict[str, tuple[int, int]]:
        """Kind of state or metric -> (the first step it diverges at, how many keys or metrics then), in
        the order they diverge: weights three steps after a loader counter are listed, not hidden."""
        found: dict[str, tuple[int, int]] = {}
        for step in sorted(self.steps):
            comparison = self.steps[step]
            counts: dict[str, int] = {}
            for difference in comparison.state:
                counts[kind_of(difference.path)] = counts.get(kind_of(difference.path), 0) + 1
            if comparison.metrics:
                counts["metrics"] = len(comparison.metrics)
            for kind, count in counts.items():
                found.setdefault(kind, (step, count))
        return found


def kind_of(path: str) -> str:
    """What a checkpoint key belongs to: the model's weights, a registered object by its name (optimizer,
    data, curriculum, ...), an RNG stream, the W&B window and journal."""
    head, _, rest = path.partition(".")
    name = rest.partition(".")[0]
    if head == "model":
        return "model weights"
    if head == "trainer" and name:
        return "model weights" if name == "model" else name
    if head == "rng" and name:
        return f"rng.{name}"
    if head == "tracking":
        return "data consumed" if name == "consumed" else "W&B window and journal"
    return head


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
    rows = payload.get("tracking", {}).get("journal", {}).get("rows", [])
    return {int(row["step"]): dict(row["metrics"]) for row in rows}


def idle_loader_counters(payload: Any, path: str = "") -> list[str]:
    """The paths of the sampler counters of every registered iterable dataset's loader: counted twice by
    torchdata's replay, read by nothing (state/loader_state.py), so not a divergence."""
    if not isinstance(payload, Mapping):
        return []
    if payload.get("format") == LOADER_FORMAT and payload.get("iterable"):
        return [f"{path}.loader.{counter}" for counter in IDLE_COUNTERS]
    return [
        p for key, value in payload.items() for p in idle_loader_counters(value, f"{path}.{key}".lstrip("."))
    ]


def is_timing(name: str) -> bool:
    leaf = name.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(leaf, p) for p in TIMING_METRICS)


def compare_step(
    step: int,
    expected: Mapping[str, Any],
    actual: Mapping[str, Any],
    rows_above: int | None,
    tally: Tally,
    ignore: Sequence[str],
    ignored_metrics: set[str],
) -> StepComparison:
    """One step's checkpoints: the state, and the rows logged above ``rows_above`` (None: every row);
    the names of the metrics left out are added to ``ignored_metrics``."""
    comparison = StepComparison(step)
    comparison.state = compare_payloads(expected, actual, (*RUN_IDENTITY, JOURNAL_ROWS, *ignore), tally)
    a_rows, b_rows = journal_rows(expected), journal_rows(actual)
    floor = -(10**18) if rows_above is None else rows_above
    for row_step in sorted({s for s in (*a_rows, *b_rows) if s > floor}):
        a_row, b_row = a_rows.get(row_step), b_rows.get(row_step)
        names = dict.fromkeys([*(a_row or {}), *(b_row or {})])
        for name in names:
            if is_timing(name) or _ignored(name, tuple(ignore)):
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
    stops: int | Sequence[int],
    total_steps: int,
    ignore: Sequence[str] = (),
) -> Verdict:
    """Compare the checkpoints of the first stop K and of every step after it; when step K differs
    already (the loop is not deterministic even without a resume), also those before it, to find where
    that starts. Each resumed process logged only the rows above the last row of the stop it resumed at.

    A global RNG stream that the loop never draws from (the same in every checkpoint of each run) but
    that differs between the runs was never seeded, and cannot change the training: it is left out
    (:attr:`Verdict.idle_streams`) rather than reported as a divergence.
    """
    tally = Tally()
    ignored: set[str] = set()
    steps: dict[int, StepComparison] = {}
    streams: dict[str, tuple[set[str], set[str]]] = {}

    stops = (stops,) if isinstance(stops, int) else tuple(sorted(stops))
    resume_at = stops[0]
    counters = idle_loader_counters(uninterrupted[resume_at])  # the same paths in every checkpoint
    # the unregistered attributes' saved values: each resumed process compares them itself as its loop
    # starts (state/unregistered.py); between two runs they may differ by design (a timer of the script's)
    left_out = (*counters, f"trainer.{WATCHED}", f"trainer.{WATCHED}.*", *ignore)

    def one(step: int, rows_above: int | None) -> None:
        a, b = uninterrupted[step], resumed[step]
        for side, payload in enumerate((a, b)):
            for name, value in dict(payload.get("rng", {})).items():
                streams.setdefault(str(name), (set(), set()))[side].add(_digest(value))
        steps[step] = compare_step(step, a, b, rows_above, tally, left_out, ignored)

    def rows_above(step: int) -> int | None:  # the last row of the stop this step's process resumed at
        rows = journal_rows(uninterrupted[max(s for s in stops if s < step)])
        return max(rows) if rows else None

    one(resume_at, None)
    for step in range(resume_at + 1, total_steps + 1):
        one(step, rows_above(step))
    idle = sorted(n for n, (a, b) in streams.items() if len(a) == len(b) == 1 and a != b)
    _drop_streams(steps.values(), idle)
    if not steps[resume_at].same:
        for step in range(1, resume_at):
            one(step, None)
        _drop_streams(steps.values(), idle)
    return Verdict(total_steps, stops, dict(sorted(steps.items())), tally, sorted(ignored), idle, counters)


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
