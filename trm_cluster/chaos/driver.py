"""``python -m trm_cluster.chaos --hits N``: hit a real run at random moments, then prove nothing was lost.

Starts the run on the local executor (real processes, real signals, submitit's own requeue) next to an
uninterrupted reference run of the same config, and until N hits have landed, hits the run's task from
the outside: SIGKILL of the task or of its whole process tree, USR2, SIGTERM, USR2 then SIGKILL 50 ms
later, USR2 twice, and SIGKILL while a checkpoint or a manifest write is under way (every durable write
pauses in the test seam, ``TRM_CLUSTER_PAUSE_IN_WRITE``, long enough to be caught). A requeue happens by
itself; after a kill the run is resumed as a user would (``submit --resume``, the same code path, called
in this process). At the end :mod:`trm_cluster.chaos.verify` checks every guarantee from the files, and
one summary line says what happened; the exit status is 0 only when every guarantee held.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import re
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import tyro

from trm_cluster.chaos import procs as chaos_procs
from trm_cluster.chaos.verify import Verdict, verify
from trm_cluster.core.process_exit import skip_final_collections
from trm_cluster.core.workload import load_workload
from trm_cluster.launch.presets import PresetError, load_preset
from trm_cluster.rundir.atomic import PAUSE_ENV
from trm_cluster.rundir.checkpoints import CHECKPOINT_DIR
from trm_cluster.rundir.manifest import ManifestError, RunManifest
from trm_cluster.submit import main as submit_main

KILLS = ("kill", "kill-tree", "usr2-kill", "kill-in-checkpoint-write", "kill-in-manifest-write")
STOPS = ("usr2", "term", "usr2-twice")
KINDS = (*KILLS, *STOPS)
WRITE_PAUSE_PATTERN = "."
"""Every durable write's target has a dot in its name (``manifest.json``, ``step_000000050.pt``)."""
_HEADER = re.compile(r"^\[trm_cluster\] segment (\d+): step (\d+)/")
_STEP = re.compile(r"^\[trm_cluster\] step (\d+)/")


@dataclass
class ChaosArgs:
    """Hit a run at random moments (kills, stop signals, kills inside writes) and prove it lost nothing."""

    hits: int = 20
    """How many hits land before the run is left to complete."""
    preset: str = "regression"
    steps: int | None = None
    """Steps of both runs (default: the preset's)."""
    run_dir: Path | None = None
    """A new directory for the hit run (run/), its reference (reference/) and chaos.log; default runs/chaos-<time>."""
    seed: int = 0
    """Seed of the hits' kinds and moments (the training keeps the preset's seed)."""
    step_delay_s: float = 0.02
    """Sleep per training step, for workloads that have one (regression): time for hits to land mid-run."""
    write_pause_s: float = 0.15
    """How long every durable write pauses before its rename, so kills can land inside one."""
    wandb: bool = True
    """Log to W&B (offline) and check its rows; --no-wandb starts processes faster."""
    timeout_min: float = 60.0
    """Give up (and fail) when the whole chaos run takes longer than this."""


class ChaosError(RuntimeError):
    """The chaos run could not go on (a run that stopped making progress, a refused resume)."""


@dataclass
class Tally:
    hits: Counter[str] = field(default_factory=Counter)
    resumes: int = 0
    stranded: list[str] = field(default_factory=list)
    """Stops that closed their segment for a requeue, after which no process came back."""
    processes: list[chaos_procs.Proc] = field(default_factory=list)
    controllers: list[int] = field(default_factory=list)


class Driver:
    def __init__(self, args: ChaosArgs, root: Path) -> None:
        self.args, self.root = args, root
        self.run_dir, self.reference = root / "run", root / "reference"
        self.rng = random.Random(args.seed)
        self.tally = Tally()
        self.deadline = time.monotonic() + 60 * args.timeout_min
        self.startup_s = 3.0  # task start to its first printed step; learnt as the run goes
        self.step_s = max(args.step_delay_s, 0.005) + 0.01
        self._log = (root / "chaos.log").open("a")

    # -- starting and resuming, through the submit command's own code ---------------------------------

    def submit(self, *argv: str) -> int:
        """``python -m trm_cluster.submit ARGV`` in this process; the job id (the local controller's pid)."""
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = submit_main(list(argv))
        self._log.write(out.getvalue())
        self._log.flush()
        if code != 0:
            raise ChaosError(f"submit {' '.join(argv)} failed ({code}): {out.getvalue().strip()[-400:]}")
        run_dir = Path(
            argv[argv.index("--resume") + 1] if "--resume" in argv else argv[argv.index("--run-dir") + 1]
        )
        job = int(RunManifest(run_dir).read().launch["job_id"])
        self.tally.controllers.append(job)
        return job

    def run_flags(self) -> list[str]:
        flags = ["--preset", self.args.preset, "--executor", "local", "--max-requeues", "1000000"]
        flags += ["--wandb-mode", "offline"] if self.args.wandb else ["--no-wandb"]
        if self.args.steps is not None:
            flags += ["--steps", str(self.args.steps)]
        if self.args.step_delay_s and _has_step_delay(self.args.preset):
            flags += ["--step-delay-s", str(self.args.step_delay_s)]
        return flags

    # -- the loop -------------------------------------------------------------------------------------

    def run(self) -> None:
        reference = self.submit(*self.run_flags(), "--run-dir", str(self.reference))
        os.environ[PAUSE_ENV] = (
            f"{WRITE_PAUSE_PATTERN}:{self.args.write_pause_s}"  # the hit run's writes only
        )
        try:
            controller = self.submit(*self.run_flags(), "--run-dir", str(self.run_dir))
        finally:
            os.environ.pop(PAUSE_ENV, None)
        last_hit: str | None = None
        while True:
            task = self._next_task(controller)
            if task is None:  # the job ended: completed, or its task died
                data = RunManifest(self.run_dir).read()
                if data.status == "completed":
                    break
                last = data.segments[-1] if data.segments else None
                if last_hit in STOPS and last is not None and last.end_reason in ("preempted", "timeout"):
                    self.tally.stranded.append(
                        f"segment {last.index} ({last_hit}): closed {last.end_reason}, never requeued"
                    )
                os.environ[PAUSE_ENV] = f"{WRITE_PAUSE_PATTERN}:{self.args.write_pause_s}"
                try:
                    controller = self.submit("--resume", str(self.run_dir), "--executor", "local")
                finally:
                    os.environ.pop(PAUSE_ENV, None)
                self.tally.resumes += 1
                last_hit = None
                continue
            self.tally.processes.append(task)
            if sum(self.tally.hits.values()) < self.args.hits:
                landed = self._hit(task, controller)
                if landed is not None:
                    self.tally.hits[landed] += 1
                    last_hit = landed
            self._wait_until_gone(task)
        self._wait_for(lambda: chaos_procs.reaped(reference), "the reference run")
        if RunManifest(self.reference).read().status != "completed":
            raise ChaosError(f"the reference run did not complete; see {self.reference / 'logs'}")

    def _next_task(self, controller: int) -> chaos_procs.Proc | None:
        """The controller's next task process, or None once the controller has ended (reaped here)."""
        seen = {p for p in self.tally.processes}
        while True:
            if chaos_procs.reaped(controller):
                return None
            for pid in chaos_procs.children(controller):
                proc = chaos_procs.identify(pid)
                if proc is not None and proc not in seen:
                    return proc
            self._tick()

    def _wait_until_gone(self, task: chaos_procs.Proc) -> None:
        self._wait_for(lambda: not chaos_procs.alive(task), f"task {task.pid} to end")

    def _wait_for(self, condition: object, what: str) -> None:
        assert callable(condition)
        while not condition():
            self._tick(what)

    def _tick(self, what: str = "the run") -> None:
        if time.monotonic() > self.deadline:
            raise ChaosError(f"gave up waiting for {what}: --timeout-min {self.args.timeout_min} passed")
        time.sleep(0.01)

    # -- hits -----------------------------------------------------------------------------------------

    def _hit(self, task: chaos_procs.Proc, controller: int) -> str | None:
        """Pick a kind and a moment, wait for it, hit; the kind that landed (None: the task ended first)."""
        kind = self.rng.choice(KINDS)
        appeared = time.monotonic()
        log = self.run_dir / "logs" / f"{controller}_0_log.out"
        if kind == "kill-in-checkpoint-write":
            moment = self._new_temp_file(task, self.run_dir / CHECKPOINT_DIR, ".step_*.tmp", 1)
        elif kind == "kill-in-manifest-write":
            moment = self._new_temp_file(task, self.run_dir, ".manifest.json.*.tmp", self.rng.randint(1, 4))
        elif self.rng.random() < 0.2:  # during the start: imports, restore, W&B, the segment's opening
            moment = self._sleep(task, self.rng.uniform(0, self.startup_s))
        else:
            moment = self._mid_training(task, log)
        if not moment:
            return None
        if kind == "kill-tree":
            chaos_procs.kill_all(chaos_procs.tree(controller))
        elif kind in KILLS and kind != "usr2-kill":
            chaos_procs.send(task, signal.SIGKILL)
        elif kind == "term":
            chaos_procs.send(task, signal.SIGTERM)
        else:
            chaos_procs.send(task, signal.SIGUSR2)
            if kind == "usr2-kill":
                time.sleep(0.05)
                chaos_procs.send(task, signal.SIGKILL)
            elif kind == "usr2-twice":
                time.sleep(self.rng.uniform(0, 1.0))
                chaos_procs.send(task, signal.SIGUSR2)
        self._log.write(f"chaos: {kind} on task {task.pid} after {time.monotonic() - appeared:.2f} s\n")
        self._log.flush()
        return kind

    def _sleep(self, task: chaos_procs.Proc, seconds: float) -> bool:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if not chaos_procs.alive(task):
                return False
            self._tick()
        return chaos_procs.alive(task)

    def _mid_training(self, task: chaos_procs.Proc, log: Path) -> bool:
        """Once the task trains, a random number of steps on: few enough that the remaining hits fit."""
        started = time.monotonic()
        index = progress = None
        while index is None or progress is None or progress[0] != index:
            if not chaos_procs.alive(task):
                return False
            if index is None:
                index = self._segment_index(task)
            else:
                progress = printed_progress(log)
            self._tick()
        self.startup_s = 0.7 * self.startup_s + 0.3 * (time.monotonic() - started)
        data = RunManifest(self.run_dir).read()
        remaining = self.args.hits - sum(self.tally.hits.values())
        budget = max(1, (data.total_steps - progress[1]) // (remaining + 1))
        first = time.monotonic()
        if not self._sleep(task, self.rng.uniform(0, budget * self.step_s)):
            return False
        now = printed_progress(log)
        if now is not None and now[0] == progress[0] and now[1] > progress[1]:  # learn the step time
            self.step_s = 0.7 * self.step_s + 0.3 * (time.monotonic() - first) / (now[1] - progress[1])
        return True

    def _segment_index(self, task: chaos_procs.Proc) -> int | None:
        """The index of the segment the task opened (None before it has)."""
        segments = RunManifest(self.run_dir).read().segments
        return next((s.index for s in reversed(segments) if s.pid == task.pid and s.end_reason is None), None)

    def _new_temp_file(self, task: chaos_procs.Proc, directory: Path, pattern: str, nth: int) -> bool:
        """Until the ``nth`` temp file that was not there before appears (the write is paused in it)."""
        known = set(directory.glob(pattern))
        while chaos_procs.alive(task):
            new = set(directory.glob(pattern)) - known
            if new:
                nth -= 1
                if nth == 0:
                    return True
                known |= new
            self._tick()
        return False


def printed_progress(log: Path) -> tuple[int, int] | None:
    """(segment, step) of the newest task in a job's stdout log: its last printed step, or its start step."""
    try:
        with log.open("rb") as handle:
            handle.seek(max(0, log.stat().st_size - 16384))
            lines = handle.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    step = None
    for line in reversed(lines):
        if step is None and (m := _STEP.match(line)):
            step = int(m.group(1))
        if m := _HEADER.match(line):
            return int(m.group(1)), max(step or 0, int(m.group(2)))
    return None


def segment_progress(run_dir: Path) -> dict[int, int]:
    """The highest step each segment printed, from every job log of the run (read after the run)."""
    reached: dict[int, int] = {}
    for log in sorted((run_dir / "logs").glob("*_0_log.out")):
        segment = None
        for line in log.read_text(errors="replace").splitlines():
            if m := _HEADER.match(line):
                segment = int(m.group(1))
                reached[segment] = int(m.group(2))
            elif (m := _STEP.match(line)) and segment is not None:
                reached[segment] = max(reached[segment], int(m.group(1)))
    return reached


def step_accounting(run_dir: Path) -> tuple[int, int]:
    """(steps recomputed after kills, steps lost to stops): what each segment printed vs where the next began."""
    data = RunManifest(run_dir).read()
    reached = segment_progress(run_dir)
    recomputed = lost = 0
    for segment, following in zip(data.segments, data.segments[1:], strict=False):
        trained = reached.get(segment.index, segment.start_step)
        if segment.end_reason == "killed":
            recomputed += max(0, trained - following.start_step)
        elif segment.end_reason in ("preempted", "timeout"):
            lost += max(0, trained - (segment.end_step or 0)) + max(
                0, (segment.end_step or 0) - following.start_step
            )
    return recomputed, lost


def _has_step_delay(preset: str) -> bool:
    import dataclasses

    config_type = load_workload(load_preset(preset).workload).config_type
    return any(f.name == "step_delay_s" for f in dataclasses.fields(config_type))


def summary(tally: Tally, verdicts: list[Verdict], run_dir: Path, requested: int) -> tuple[bool, str]:
    recomputed, lost = step_accounting(run_dir)
    failed = [v for v in verdicts if not v.ok]
    ok = not failed and lost == 0 and not tally.stranded
    kinds = ", ".join(f"{k} {tally.hits[k]}" for k in KINDS if tally.hits[k])
    landed = sum(tally.hits.values())
    asked = f" of {requested} asked: the run completed first" if landed < requested else ""
    segments = len(RunManifest(run_dir).read().segments)
    checks = ", ".join(f"{v.name} {'ok' if v.ok else 'FAILED'}" for v in verdicts)
    line = (
        f"chaos {'PASS' if ok else 'FAIL'}: {sum(tally.hits.values())} hits{asked} ({kinds}); {tally.resumes} resumes, "
        f"{segments} segments, {recomputed} steps recomputed after kills, {lost} steps lost to USR2/TERM, "
        f"{len(tally.stranded)} stranded; {checks}"
    )
    return ok, line


def main(argv: list[str] | None = None) -> int:
    skip_final_collections()
    args = tyro.cli(ChaosArgs, args=argv, prog="python -m trm_cluster.chaos")
    root = (args.run_dir or Path("runs") / f"chaos-{datetime.now():%Y%m%d-%H%M%S}").resolve()
    try:
        if args.hits < 0 or args.write_pause_s < 0 or args.step_delay_s < 0:
            raise ValueError("--hits, --write-pause-s and --step-delay-s must be >= 0")
        load_preset(args.preset)
        if root.exists() and any(root.iterdir()):
            raise ValueError(f"{root} already exists and is not empty; choose another --run-dir")
        root.mkdir(parents=True, exist_ok=True)
    except (ValueError, PresetError) as error:
        print(f"trm-chaos: error: {error}", file=sys.stderr)
        return 2
    os.environ.setdefault("WANDB_SILENT", "true")
    driver = Driver(args, root)
    try:
        driver.run()
    except (ChaosError, ManifestError) as error:
        leftovers = [p for c in driver.tally.controllers for p in chaos_procs.tree(c)]
        chaos_procs.kill_all(leftovers)
        print(f"chaos FAIL: {error}", file=sys.stderr)
        return 1
    verdicts = verify(driver.run_dir, driver.reference, driver.tally.processes)
    ok, line = summary(driver.tally, verdicts, driver.run_dir, args.hits)
    for verdict in verdicts:
        print(f"  {verdict.name}: {'ok' if verdict.ok else 'FAILED'} ({verdict.detail})")
    for stranded in driver.tally.stranded:
        print(f"  stranded: {stranded}")
    print(line, flush=True)
    return 0 if ok else 1
