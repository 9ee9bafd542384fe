"""What the hang watchdog (runtime/watchdog.py) costs, and how fast a hung step is left.

- per step: the session's hot path (empty step bodies, W&B disabled, no periodic checkpoint) with no
  watchdog, with ``step_timeout_s`` and with ``stop_grace_s``, interleaved (A B C, B C A, C A B, ...) in
  fresh processes; the ratios are taken within a repetition against the unwatched loop;
- a hung step: a script stuck in its step gets USR2; the seconds from the signal to the process's exit
  (``stop_grace_s=1``, exit 75: run it again to resume), and to the segment's ``hung`` record.

Nothing is asserted: read the ratios (the machine is shared). Usage: python benchmarks/bench_watchdog.py
[--steps N] [--repeats R]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOOP = """
import sys, time, trm_cluster
with trm_cluster.session(steps={steps}, checkpoint_every=0, log_every=100{limits}) as run:
    run.restore(counters={{}})
    began = None
    for step in run.steps():
        if step == 1:
            began = time.perf_counter()
    ended = time.perf_counter()
print("us/step", (ended - began) / ({steps} - 1) * 1e6)
"""

HUNG = """
import os, time, trm_cluster
with trm_cluster.session(steps=10, checkpoint_every=1, stop_grace_s=1) as run:
    run.restore(counters={})
    for step in run.steps():
        if step == 3:
            open("stuck", "w").close()
            time.sleep(3600)
"""

VARIANTS = {"none": "", "step_timeout_s": ", step_timeout_s=3600", "stop_grace_s": ", stop_grace_s=3600"}


def _env(run_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "SUBMITIT_", "SLURM_"))}
    env.update(WANDB_MODE="disabled", TRM_CLUSTER_RUN_DIR=str(run_dir))
    return env


def per_step_us(root: Path, variant: str, steps: int, index: int) -> float:
    script = root / f"loop-{variant}.py"
    script.write_text(LOOP.format(steps=steps, limits=VARIANTS[variant]))
    run_dir = root / f"run-{variant}-{index}"
    done = subprocess.run([sys.executable, str(script)], env=_env(run_dir), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("us/step ")]
    return float(line.split()[1])


def hung_exit_s(root: Path, index: int) -> tuple[float, float]:
    work = root / f"hung-{index}"
    work.mkdir()
    (work / "hung.py").write_text(HUNG)
    run_dir = work / "run"
    proc = subprocess.Popen([sys.executable, "hung.py"], cwd=work, env=_env(run_dir),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    while not (work / "stuck").exists():
        time.sleep(0.01)
    asked = time.perf_counter()
    proc.send_signal(signal.SIGUSR2)
    recorded = None
    while proc.poll() is None:
        if recorded is None:
            try:
                if (
                    json.loads((run_dir / "manifest.json").read_text())["segments"][-1]["end_reason"]
                    == "hung"
                ):
                    recorded = time.perf_counter() - asked
            except (OSError, ValueError, KeyError, IndexError):
                pass
        time.sleep(0.01)
    exited = time.perf_counter() - asked
    if proc.returncode != 75:
        raise RuntimeError(f"the hung script exited {proc.returncode}, not 75")
    return recorded if recorded is not None else exited, exited


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    names = list(VARIANTS)
    times: dict[str, list[float]] = {name: [] for name in names}
    ratios: dict[str, list[float]] = {name: [] for name in names[1:]}
    with tempfile.TemporaryDirectory(prefix="trm-bench-watchdog-") as tmp:
        root = Path(tmp)
        for repeat in range(args.repeats):
            order = names[repeat % len(names) :] + names[: repeat % len(names)]
            measured = {name: per_step_us(root, name, args.steps, repeat) for name in order}
            for name, value in measured.items():
                times[name].append(value)
            for name in names[1:]:
                ratios[name].append(measured[name] / measured["none"])
        hung = [hung_exit_s(root, i) for i in range(args.repeats)]
    print(f"session hot path, {args.steps} empty steps, {args.repeats} repetitions (median [min..max])")
    for name in names:
        values = times[name]
        line = f"  {name:<15} {statistics.median(values):8.1f} us/step [{min(values):.1f}..{max(values):.1f}]"
        if name in ratios:
            r = ratios[name]
            line += f"  x{statistics.median(r):.3f} [{min(r):.3f}..{max(r):.3f}] of none"
        print(line)
    recorded, exited = [h[0] for h in hung], [h[1] for h in hung]
    print(f"a hung step, stop_grace_s=1: USR2 -> 'hung' recorded {statistics.median(recorded):.2f} s "
          f"[{min(recorded):.2f}..{max(recorded):.2f}], -> exit {statistics.median(exited):.2f} s "
          f"[{min(exited):.2f}..{max(exited):.2f}]")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
