"""What the loop-side session costs per step: the example script's loop, bare and through the session.

The loop of ``examples/train_script.py`` (its synthetic regression data, StatefulDataLoader,
MLP with dropout, EMA weights, AdamW, LambdaLR warmup + cosine, ``loss.item()`` and the LR every step,
a grad norm on the logged steps, an EMA validation every 100 steps), built here from the script's own
functions and run four ways, interleaved over the repetitions (A B C D, B C D A, C D A B, ...):

- bare: ``for step in range(N)``, no trm_cluster at all; the values the script logs are computed and kept
  in a list every ``log_every`` steps, as a plain script would hand them to its logger;
- session, W&B disabled: ``for step in run.steps()`` with ``run.log`` / ``run.will_log`` / ``run.log_now``
  (no periodic checkpoint; the final save still happens when the loop ends);
- session, W&B offline: the same, with a real offline wandb run in the run directory;
- session, W&B disabled, checkpoint every 50: the full state saved atomically every 50 steps.

Each runs with ``num_workers=0`` and ``num_workers=2`` (the script's default), after an unrecorded
warm-up of every variant. Per repetition, the per-step time is the time from the top of the first
step's body to the top of the last over N - 1 steps (each step's body plus the session's work at its
boundary: the window, a row every ``log_every`` steps, the saves), and the median step is the median of
those N - 1 intervals (the typical step, without the saves and evals); the ratios are taken against the
bare run of the same repetition. The one-off costs (opening the session, restore + wandb.init, the
loop's last boundary with the final save, closing with wandb.finish) are reported apart. A second table
times the session's hot path alone (empty step bodies, many steps). torch runs one intra-op thread
(``--threads``). Nothing is asserted: the figures vary with the machine's load.

Usage: python benchmarks/session_overhead.py [--quick] [--steps N] [--repeats R] [--workers 0 2]
[--threads T] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import itertools
import json
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchdata.stateful_dataloader import StatefulDataLoader

import trm_cluster
from trm_cluster.core.job_context import JobContext
from trm_cluster.core.wandb_options import WandbOptions
from trm_cluster.rundir.creation import create_script_run
from trm_cluster.runtime.plan import SessionPlan
from trm_cluster.runtime.session import Session

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import train_script  # the example script, examples/train_script.py
from train_script import evaluate, synthetic_regression

SCRIPT = Path(train_script.__file__)
LOG_EVERY = 10
EVAL_EVERY = 100  # train_script's --eval-interval default
LR_WARMUP = 20  # train_script: warmup = 20
SEED = 0
WARMUP_STEPS = 20
# train_script's defaults: --lr 3e-3 --batch-size 32 --ema-decay 0.99
LR, BATCH, EMA_DECAY = 3e-3, 32, 0.99


# -- the example's training pieces ----------------------------------------------------------------


class Parts:
    """The objects train_script.py builds, and its step body (everything but the logging calls)."""

    def __init__(self, num_workers: int, with_trm: bool) -> None:
        torch.manual_seed(SEED)
        random.seed(SEED)
        np.random.seed(SEED)
        self.train_set = synthetic_regression(SEED)
        self.val_set = synthetic_regression(SEED + 1, size=256)
        self.loader = StatefulDataLoader(
            self.train_set,
            batch_size=BATCH,
            shuffle=True,
            num_workers=num_workers,
            generator=torch.Generator().manual_seed(SEED),
            worker_init_fn=trm_cluster.ignore_stop_signals if with_trm else None,
        )
        self.model = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Dropout(0.1), nn.Linear(64, 1))
        self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(EMA_DECAY))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=LR, weight_decay=0.01)
        self.schedule: torch.optim.lr_scheduler.LambdaLR | None = None
        self.batches: Iterator[Any] = iter(())

    def make_schedule(self, total: int) -> None:
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: min(1.0, (s + 1) / LR_WARMUP) * 0.5 * (1 + math.cos(math.pi * min(s / total, 1.0))),
        )

    def state(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "optimizer": self.optimizer,
            "ema": self.ema,
            "data": self.loader,
            "scheduler": self.schedule,
        }

    def step(self) -> torch.Tensor:
        assert self.schedule is not None
        batch = next(self.batches, None)
        if batch is None:  # a new epoch
            self.batches = iter(self.loader)
            batch = next(self.batches)
        inputs, targets = batch
        jitter = 1.0 + 0.02 * (random.random() - 0.5) + 0.02 * (float(np.random.rand()) - 0.5)
        noisy = targets * jitter + 0.05 * torch.randn_like(targets)
        loss = nn.functional.mse_loss(self.model(inputs), noisy)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.schedule.step()
        self.ema.update_parameters(self.model)
        return loss

    def grad_norm(self) -> float:
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        return float(torch.nn.utils.get_total_norm(grads))


# -- one timed run of each variant ----------------------------------------------------------------


@dataclass
class Timing:
    per_step_s: float
    """(top of the last step's body - top of the first) / (N - 1)."""
    median_step_s: float
    """The median of the N - 1 step-to-step intervals: the typical step, without saves and evals."""
    one_off: dict[str, float] = field(default_factory=dict)
    events: dict[str, float] = field(default_factory=dict)
    """What a step that ends a log window costs more than a plain step ("row step": the grad norm, and
    in the session the window's row), and a step that also saves more than such a step ("save step");
    medians over the run's steps of each kind, so they hold up against the machine's noise."""


def _timing(tops: Sequence[float], checkpoint_every: int, one_off: dict[str, float]) -> Timing:
    intervals = [b - a for a, b in itertools.pairwise(tops)]  # interval i: step i's body + boundary i + 1
    kinds: dict[str, list[float]] = {"plain": [], "row": [], "save": []}
    for index, interval in enumerate(intervals):
        done = index + 1
        if done % EVAL_EVERY == 0:
            continue  # the EMA validation runs in this step's body
        if checkpoint_every and done % checkpoint_every == 0:
            kinds["save"].append(interval)
        elif done % LOG_EVERY == 0:
            kinds["row"].append(interval)
        else:
            kinds["plain"].append(interval)
    medians = {kind: statistics.median(values) for kind, values in kinds.items() if values}
    events = {}
    if "row" in medians and "plain" in medians:
        events["row step"] = medians["row"] - medians["plain"]
    if "save" in medians and "row" in medians:
        events["save step"] = medians["save"] - medians["row"]
    per_step = (tops[-1] - tops[0]) / len(intervals)
    return Timing(per_step, statistics.median(intervals), one_off, events)


def run_bare(steps: int, num_workers: int) -> Timing:
    parts = Parts(num_workers, with_trm=False)
    parts.make_schedule(steps)
    assert parts.schedule is not None
    before_iter = time.perf_counter()
    parts.batches = iter(parts.loader)
    first_iter = time.perf_counter() - before_iter
    rows: list[dict[str, float]] = []
    tops: list[float] = []
    for step in range(steps):
        tops.append(time.perf_counter())
        loss = parts.step()
        metrics = {"loss": loss.item(), "lr": parts.schedule.get_last_lr()[0]}
        if (step + 1) % LOG_EVERY == 0 or step + 1 == steps:
            metrics["grad_norm"] = parts.grad_norm()
            rows.append(metrics)
        if (step + 1) % EVAL_EVERY == 0:
            rows.append({"val/mse": evaluate(parts.ema, parts.val_set)})
        bottom = time.perf_counter()
    end = time.perf_counter()
    rows.append({"final/val_mse": evaluate(parts.ema, parts.val_set)})
    return _timing(tops, 0, {"iter(loader)": first_iter, "loop exit": end - bottom})


def run_session(
    root: Path, name: str, steps: int, num_workers: int, mode: str, checkpoint_every: int
) -> Timing:
    run_dir = root / name
    flags = {"steps": steps, "checkpoint_every": checkpoint_every, "log_every": LOG_EVERY}
    t0 = time.perf_counter()
    create_script_run(run_dir, SCRIPT, [], flags, wandb=WandbOptions(mode=mode))
    created = time.perf_counter()
    parts = Parts(num_workers, with_trm=True)
    tops: list[float] = []
    # WandbTracker.begin prints its run id whatever `quiet` says; keep the table readable
    with contextlib.redirect_stdout(io.StringIO()):
        t1 = time.perf_counter()
        with Session(SessionPlan(run_dir, JobContext.detect(), quiet=True), flags) as run:
            t2 = time.perf_counter()
            parts.make_schedule(run.total_steps)
            assert parts.schedule is not None
            t3 = time.perf_counter()
            run.restore(**parts.state())
            t4 = time.perf_counter()
            parts.batches = iter(parts.loader)
            t5 = time.perf_counter()
            for step in run.steps():
                tops.append(time.perf_counter())
                loss = parts.step()
                run.log({"loss": loss.item(), "lr": parts.schedule.get_last_lr()[0]})
                if run.will_log:
                    run.log({"grad_norm": parts.grad_norm()})
                if (step + 1) % EVAL_EVERY == 0:
                    run.log_now({"val/mse": evaluate(parts.ema, parts.val_set)})
                bottom = time.perf_counter()
            t6 = time.perf_counter()
            run.log({"final/val_mse": evaluate(parts.ema, parts.val_set)})
            t7 = time.perf_counter()
        t8 = time.perf_counter()
    one_off = {
        "create run": created - t0,
        "open": t2 - t1,
        "restore": t4 - t3,
        "iter(loader)": t5 - t4,
        "first step": tops[0] - t5,
        "loop exit": t6 - bottom,
        "close": t8 - t7,
    }
    return _timing(tops, checkpoint_every, one_off)


# -- the hot path alone: empty step bodies --------------------------------------------------------


def hot_bare(steps: int) -> float:
    last, start, end = steps - 1, 0.0, 0.0
    for step in range(steps):
        if step == 0:
            start = time.perf_counter()
        elif step == last:
            end = time.perf_counter()
    return (end - start) / last


def hot_session(root: Path, name: str, steps: int, mode: str, log: bool) -> float:
    """Per step of ``for step in run.steps()`` with an empty body or (``log``) only the script's logging
    calls, with constant values: run.log of two floats, run.will_log, run.log of one more on logged steps.
    Timed from the top of the first step to the top of the last, so neither the loop's prologue nor its
    final save counts; the same two comparisons per step as :func:`hot_bare`."""
    run_dir = root / name
    flags = {"steps": steps, "checkpoint_every": 0, "log_every": LOG_EVERY}
    create_script_run(run_dir, SCRIPT, [], flags, wandb=WandbOptions(mode=mode))
    last, start, end = steps - 1, 0.0, 0.0
    with (
        contextlib.redirect_stdout(io.StringIO()),
        Session(SessionPlan(run_dir, JobContext.detect(), quiet=True), flags) as run,
    ):
        run.restore(weight=torch.zeros(1))
        if log:
            for step in run.steps():
                if step == 0:
                    start = time.perf_counter()
                elif step == last:
                    end = time.perf_counter()
                run.log({"loss": 0.5, "lr": 1e-3})
                if run.will_log:
                    run.log({"grad_norm": 1.0})
        else:
            for step in run.steps():
                if step == 0:
                    start = time.perf_counter()
                elif step == last:
                    end = time.perf_counter()
    return (end - start) / last


# -- the table -----------------------------------------------------------------------------------


VARIANTS: list[tuple[str, str, int]] = [  # label, W&B mode (or "bare"), checkpoint_every
    ("bare", "bare", 0),
    ("session, W&B disabled", "disabled", 0),
    ("session, W&B offline", "offline", 0),
    ("session, W&B disabled, checkpoint every 50", "disabled", 50),
]


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def measure(
    steps: int, repeats: int, workers: Sequence[int], hot_steps: int, hot_repeats: int
) -> dict[str, Any]:
    results: dict[str, Any] = {"steps": steps, "repeats": repeats, "log_every": LOG_EVERY, "variants": {}}
    runs: dict[tuple[int, str], list[Timing]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # not recorded: first calls (torch kernels, the loader, imports), except the process's first
        # wandb.init, which every new process of a real run pays (import wandb, start wandb-core)
        for num_workers in workers:
            for _, mode, every in VARIANTS:
                if mode == "bare":
                    run_bare(WARMUP_STEPS, num_workers)
                else:
                    warm = run_session(
                        root, f"warm-w{num_workers}-{mode}-c{every}", WARMUP_STEPS, num_workers, mode, every
                    )
                    if mode == "offline" and "first_wandb_restore_s" not in results:
                        results["first_wandb_restore_s"] = warm.one_off["restore"]
        print("  warmed up", flush=True)
        for rep in range(repeats):
            for num_workers in workers:
                shift = rep % len(
                    VARIANTS
                )  # each variant in each position once per len(VARIANTS) repetitions
                for label, mode, every in VARIANTS[shift:] + VARIANTS[:shift]:
                    gc.collect()
                    if mode == "bare":
                        timing = run_bare(steps, num_workers)
                    else:
                        name = f"r{rep}-w{num_workers}-{mode}-c{every}"
                        timing = run_session(root, name, steps, num_workers, mode, every)
                    runs.setdefault((num_workers, label), []).append(timing)
            print(f"  repetition {rep + 1}/{repeats} done", flush=True)
        hot: dict[str, list[float]] = {}
        hot_variants: list[tuple[str, Callable[[str], float]]] = [
            ("for step in range(N), empty body", lambda _: hot_bare(hot_steps)),
            ("run.steps(), empty body, W&B disabled",
             lambda n: hot_session(root, n, hot_steps, "disabled", log=False)),
            ("run.steps() + the script's run.log calls, W&B disabled",
             lambda n: hot_session(root, n, hot_steps, "disabled", log=True)),
            ("run.steps() + the script's run.log calls, W&B offline",
             lambda n: hot_session(root, n, hot_steps, "offline", log=True)),
        ]  # fmt: skip
        for rep in range(hot_repeats):
            for index, (label, call) in enumerate(hot_variants):
                gc.collect()
                hot.setdefault(label, []).append(call(f"hot{rep}-{index}"))
    for (num_workers, label), timings in runs.items():
        bare = runs[(num_workers, VARIANTS[0][0])]
        ratios = [t.per_step_s / b.per_step_s for t, b in zip(timings, bare, strict=True)]
        median_ratios = [t.median_step_s / b.median_step_s for t, b in zip(timings, bare, strict=True)]
        one_off_keys = timings[0].one_off.keys()
        results["variants"][f"{label}, workers {num_workers}"] = {
            "num_workers": num_workers,
            "per_step_s": _spread([t.per_step_s for t in timings]),
            "median_step_s": _spread([t.median_step_s for t in timings]),
            "ratio_to_bare": _spread(ratios),
            "median_step_ratio_to_bare": _spread(median_ratios),
            "per_step_extra_s": _spread([t.per_step_s - b.per_step_s for t, b in zip(timings, bare, strict=True)]),
            "one_off_s": {key: _spread([t.one_off[key] for t in timings]) for key in one_off_keys},
            "events_s": {key: _spread([t.events[key] for t in timings]) for key in timings[0].events},
        }  # fmt: skip
    results["hot_path"] = {"steps": hot_steps, "repeats": hot_repeats}
    results["hot_path"]["per_step_s"] = {label: _spread(values) for label, values in hot.items()}
    return results


def _range(values: dict[str, float], scale: float, digits: int, unit: str = "") -> str:
    median, low, high = (values[k] * scale for k in ("median", "min", "max"))
    return f"{median:.{digits}f}{unit} [{low:.{digits}f}..{high:.{digits}f}]"


def print_table(results: dict[str, Any]) -> None:
    """Markdown, so the figures paste into docs/performance.md as measured."""
    steps, repeats = results["steps"], results["repeats"]
    print(f"\ntrain_script.py's loop, {steps} steps, log_every {LOG_EVERY}, EMA eval every {EVAL_EVERY}; "
          f"median over {repeats} interleaved repetitions [min..max]; ratios and extra per step are "
          f"against the bare run of the same repetition\n")  # fmt: skip
    print("| variant | us/step | steps/s | ratio to bare | extra us/step | median step, us | its ratio |")
    print("|---|---|---|---|---|---|---|")
    for label, row in results["variants"].items():
        per_step = row["per_step_s"]["median"]
        print(f"| {label} | {per_step * 1e6:.0f} | {1 / per_step:.0f} "
              f"| {_range(row['ratio_to_bare'], 1, 3, 'x')} | {_range(row['per_step_extra_s'], 1e6, 0)} "
              f"| {row['median_step_s']['median'] * 1e6:.0f} "
              f"| {_range(row['median_step_ratio_to_bare'], 1, 3, 'x')} |")  # fmt: skip
    print("\none-off costs, ms, median [min..max]: open = Session() + __enter__ (manifest read, segment "
          "opened); restore = run.restore (state validated with a state_dict() of every object, which "
          "starts a StatefulDataLoader's workers; checkpoint lookup; wandb.init); iter(loader) = the "
          "first iterator (reused from restore's state_dict() with workers); loop exit = the last "
          "step's boundary + the final save; close = __exit__ (wandb.finish, segment closed); row step = "
          "what a step ending a log window (grad norm; the session's row) takes more than a plain step, "
          "save step = what a step that also saves takes more than a row step: medians within each run\n")  # fmt: skip
    keys = ["create run", "open", "restore", "iter(loader)", "first step", "loop exit", "close"]
    events = ["row step", "save step"]
    print("| variant | " + " | ".join(keys + [f"{e} (+ms)" for e in events]) + " |")
    print("|---|" + "---|" * (len(keys) + len(events)))
    for label, row in results["variants"].items():
        cells = [_range(row["one_off_s"][k], 1e3, 1) if k in row["one_off_s"] else "" for k in keys]
        cells += [_range(row["events_s"][e], 1e3, 2) if e in row["events_s"] else "" for e in events]
        print(f"| {label} | " + " | ".join(cells) + " |")
    if "first_wandb_restore_s" in results:
        print(f"\nthe process's first run.restore with W&B offline (import wandb, start wandb-core, wandb.init): "
              f"{results['first_wandb_restore_s'] * 1e3:.0f} ms")  # fmt: skip
    hot = results["hot_path"]
    print(f"\nthe session's hot path alone: {hot['steps']} steps of an empty body, median over "
          f"{hot['repeats']} repetitions [min..max]\n")  # fmt: skip
    print("| loop | us/step |")
    print("|---|---|")
    for label, values in hot["per_step_s"].items():
        print(f"| {label} | {_range(values, 1e6, 2)} |")


def machine_state() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in load],
        "platform": platform.platform(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 steps, 2 repetitions, workers 0 only")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 500; quick 200)")
    parser.add_argument("--repeats", type=int, default=None, help="repetitions (default 4; quick 2)")
    parser.add_argument("--workers", type=int, nargs="+", default=None, help="num_workers (default 0 2)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: on a loaded machine torch's default of one "
                        "per core spins against the other load; 0 keeps torch's default)")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    steps = args.steps or (200 if args.quick else 500)
    repeats = args.repeats or (2 if args.quick else 4)
    workers = args.workers if args.workers is not None else ([0] if args.quick else [0, 2])
    hot_steps, hot_repeats = (5_000, 2) if args.quick else (50_000, 3)
    if steps < 2 or repeats < 1:
        parser.error("--steps must be at least 2 and --repeats at least 1")
    os.environ["WANDB_SILENT"] = "true"
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="'set_vital' is deprecated")  # torchdata 0.11, every iter()
    state = machine_state()
    print(f"machine: {state['cpus']} CPUs, load average {state['load_average']} at the start, "
          f"torch {state['torch']} ({state['torch_threads']} threads)", flush=True)  # fmt: skip
    started = time.perf_counter()
    results = measure(steps, repeats, workers, hot_steps, hot_repeats)
    results["machine"] = state
    results["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    results["wall_s"] = time.perf_counter() - started
    print_table(results)
    print(
        f"wall clock {results['wall_s']:.0f} s; load average at the end {results['machine']['load_average_end']}"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
