"""The resume doctor's runs: each loop run in fresh processes, and the checkpoints they leave.

:func:`examine` creates run A and run B, runs A uninterrupted alongside B stopped after step K (exit
75, as a preemption stops it), then B resumed in another process, checks that each did what the
comparison needs (or raises :class:`Untestable` with its last lines), and compares their checkpoints
(doctor/checkpoints.py reads them, doctor/compare.py compares them) and the causes (doctor/causes.py).
The command is doctor/cli.py.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trm_cluster.core.config import RunConfig
from trm_cluster.core.wandb_options import WandbOptions
from trm_cluster.core.workload import dataclass_from_dict, load_workload
from trm_cluster.doctor.causes import Cause, divergence_causes, warning_causes
from trm_cluster.doctor.checkpoints import Checkpoints
from trm_cluster.doctor.errors import BadInput, Untestable
from trm_cluster.doctor.warm import Zygote, kill
from trm_cluster.launch.presets import PresetError, load_preset
from trm_cluster.rundir.creation import create_run, create_script_run
from trm_cluster.rundir.manifest import RunManifest
from trm_cluster.runtime.plan import (
    EXIT_STOPPED,
    RUN_DIR_ENV,
    SKIP_RNG_RESTORE_ENV,
    STOP_AFTER_ENV,
    TRACE_DATA_ENV,
)

if TYPE_CHECKING:
    from trm_cluster.doctor.compare import Verdict

# The launch side (launch/runs.py), the comparison (compare.py) and the checkpoints' reader (checkpoints.py)
# import torch: they are imported where they are used, so a bad request is answered before torch's seconds.

TAIL_LINES = 25


def doctor_run_flags(steps: int) -> dict[str, Any]:
    """The run settings of every doctor run: a checkpoint, kept, and a row after every step."""
    return {"steps": steps, "checkpoint_every": 1, "keep_checkpoints": steps + 1, "log_every": 1}


# -- the loops ----------------------------------------------------------------------------------------


class Loop:
    """How to create a run of one loop, and the command of each of its processes."""

    def describe(self) -> str:
        raise NotImplementedError

    def create(self, run_dir: Path, steps: int, cwd: Path) -> None:
        raise NotImplementedError

    def command(self, run_dir: Path) -> tuple[list[str], dict[str, str]]:
        """The command of one process of this loop's run in ``run_dir``, and its extra environment."""
        raise NotImplementedError


@dataclass
class ScriptLoop(Loop):
    script: Path
    args: list[str]

    def describe(self) -> str:
        return f"script {self.script}" + (f" {' '.join(self.args)}" if self.args else "")

    def create(self, run_dir: Path, steps: int, cwd: Path) -> None:
        create_script_run(
            run_dir,
            script=self.script,
            script_args=self.args,
            run_flags=doctor_run_flags(steps),
            name=run_dir.name,
            wandb=WandbOptions(mode="disabled"),
            launch={"executor": "process", "cwd": str(cwd), "doctor": True},
        )

    def command(self, run_dir: Path) -> tuple[list[str], dict[str, str]]:
        return [sys.executable, str(self.script), *self.args], {RUN_DIR_ENV: str(run_dir)}


@dataclass
class PresetLoop(Loop):
    name: str
    workload: str
    config: dict[str, Any]

    def describe(self) -> str:
        return f"preset {self.name} ({self.workload})"

    @classmethod
    def load(cls, name: str, steps: int) -> PresetLoop:
        """The preset's config, its run settings overridden by the doctor's; every check before a write."""
        try:
            preset = load_preset(name)
            workload = load_workload(preset.workload)
            job = workload.config_from_dict(preset.job)
            run = dataclass_from_dict(RunConfig, {**preset.run, **doctor_run_flags(steps)})
            run.validate()
        except (PresetError, ValueError, TypeError) as error:
            raise BadInput(str(error)) from None
        from trm_cluster.launch.runs import resolved_config  # torch, submitit: see the top

        return cls(name, preset.workload, resolved_config(run, job))

    def create(self, run_dir: Path, steps: int, cwd: Path) -> None:
        create_run(
            run_dir,
            run_dir.name,
            self.workload,
            self.config,
            WandbOptions(mode="disabled"),
            max_requeues=20,
            launch={"executor": "process", "preset": self.name, "cwd": str(cwd), "doctor": True},
        )

    def command(self, run_dir: Path) -> tuple[list[str], dict[str, str]]:
        code = f"from trm_cluster.scheduler.job import TrainingJob; TrainingJob({str(run_dir)!r})()"
        return [sys.executable, "-c", code], {}


@dataclass
class Request:
    """What to examine: N steps of a loop, stopped after each of the steps K1 < K2 < ... and resumed in
    a fresh process each time (parsed by doctor/cli.py)."""

    steps: int
    stops: tuple[int, ...]
    cwd: Path
    keep: Path | None
    ignore: list[str]
    timeout_s: float
    serial: bool
    loop: Loop
    control: bool = False
    """Also resume once with the RNG restore skipped, to show that the comparison catches a bad resume."""
    warm: bool = True
    """Fork each process from a warm interpreter of its run (doctor/warm.py); False: a fresh one each."""


# -- running the processes ----------------------------------------------------------------------------


@dataclass
class Process:
    label: str
    returncode: int
    seconds: float
    stdout: Path
    stderr: Path

    def text(self, which: str = "stderr") -> str:
        path = self.stderr if which == "stderr" else self.stdout
        return path.read_text(errors="replace") if path.exists() else ""

    def tail(self, lines: int = TAIL_LINES) -> str:
        text = self.text("stderr").strip() or self.text("stdout").strip()
        shown = text.splitlines()[-lines:]
        return "\n".join(f"    | {line}" for line in shown) if shown else "    | (no output)"


def child_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """The user's environment without anything that would make the child a scheduler's task or stop it,
    W&B off (also for a script that calls wandb itself), and this very trm_cluster first on the path."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SUBMITIT_", "SLURM_")) and key not in (RUN_DIR_ENV, STOP_AFTER_ENV)
    }
    package_root = Path(__file__).resolve().parents[2]  # trm_cluster/doctor/runs.py -> the checkout
    if package_root.name not in ("site-packages", "dist-packages"):  # a checkout: put it first
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(package_root), env.get("PYTHONPATH", "")) if p)
    env["WANDB_MODE"] = "disabled"
    env[TRACE_DATA_ENV] = "1"  # every checkpoint records what its step consumed (runtime/data_trace.py)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Running:
    """One process of a loop, started; :meth:`wait` gives its :class:`Process`."""

    def __init__(
        self,
        label: str,
        loop: Loop,
        run_dir: Path,
        logs: Path,
        cwd: Path,
        timeout_s: float,
        stop_after: int | None,
        planted: Mapping[str, str] | None = None,
        zygote: Zygote | None = None,
    ) -> None:
        command, extra = loop.command(run_dir)
        extra = {**extra, **(planted or {})}
        if stop_after is not None:
            extra = {**extra, STOP_AFTER_ENV: str(stop_after)}
        slug = label.replace(" ", "-")
        self.label, self.timeout_s, self.zygote = label, timeout_s, zygote
        self.stdout, self.stderr = logs / f"{slug}.out", logs / f"{slug}.err"
        self.stdout.write_bytes(b"")
        self.stderr.write_bytes(b"")
        self.started = time.monotonic()
        self.code: int | None = None
        if zygote is not None:
            self.pid = zygote.start(command, child_environment(extra), cwd, self.stdout, self.stderr)
            return
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.popen = subprocess.Popen(
                command, cwd=cwd, env=child_environment(extra), stdout=out, stderr=err
            )
        self.pid = self.popen.pid

    def wait(self) -> Process:
        remaining = max(self.timeout_s - (time.monotonic() - self.started), 0.01)
        code = self._wait(remaining)
        if code is None:
            self.kill()
            code = -1
            with self.stderr.open("ab") as err:
                err.write(f"\n[doctor] killed after {self.timeout_s:g} s (--timeout)\n".encode())
        self.code = code
        return Process(self.label, code, time.monotonic() - self.started, self.stdout, self.stderr)

    def _wait(self, timeout_s: float) -> int | None:
        if self.zygote is not None:
            return self.zygote.wait(self.pid, timeout_s)
        try:
            return self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """Kill this process (only it: the doctor's own child, or its zygote's) if it still runs."""
        if self.code is not None:
            return
        if self.zygote is None:
            if self.popen.poll() is None:
                self.popen.kill()
                self.popen.wait()
            return
        kill(self.pid)
        self.code = self.zygote.wait(self.pid, 30)


def _expect(process: Process, code: int, what: str) -> None:
    if process.returncode == code:
        return
    if process.returncode == 0 and code == EXIT_STOPPED:
        why = (
            "ran to its end instead of stopping: does the loop iterate `for step in run.steps():` "
            "and is the stop step inside the run?"
        )
    elif process.returncode == EXIT_STOPPED:
        why = f"stopped early (exit {EXIT_STOPPED}) though nothing asked it to"
    elif process.returncode == -1:
        why = "timed out"
    else:
        why = f"crashed (exit status {process.returncode})"
    raise Untestable(
        f"{process.label} ({what}) {why} after {process.seconds:.1f} s; its last lines:\n{process.tail()}"
    )


def _status(run_dir: Path, label: str, steps: int) -> None:
    data = RunManifest(run_dir).read()
    if data.status != "completed" or data.step != steps:
        raise Untestable(f"{label} ended {data.status} at step {data.step}, not completed at step {steps}")


# -- the examination ----------------------------------------------------------------------------------


def _import_beside_the_runs(module: str) -> threading.Thread:
    """Import ``module`` (the comparison: torch) on a thread while the runs run, not after them. Started
    once both runs are under way, so it does not compete with their interpreters' own imports. A failed
    import is left to the import in the main thread, which raises it again."""

    def quietly() -> None:
        with contextlib.suppress(Exception):
            importlib.import_module(module)

    thread = threading.Thread(target=quietly, name="doctor-imports", daemon=True)
    thread.start()
    return thread


@dataclass
class Outcome:
    verdict: Verdict
    causes: list[Cause]
    warnings: list[Cause]
    control: Verdict | None = None
    """The control run (resumed at the first stop with the RNG restore skipped) against run A."""


def examine(request: Request, work: Path, say: Any = print) -> Outcome:
    """Run A, and B stopped at each K and resumed in a fresh process, in ``work``; compare them. Run A
    runs alongside run B unless ``request.serial``."""
    n, stops = request.steps, request.stops
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    run_a, run_b, run_c = work / "uninterrupted", work / "resumed", work / "control"
    request.loop.create(run_a, n, request.cwd)
    request.loop.create(run_b, n, request.cwd)
    running: list[Running] = []

    zygotes: dict[Path, Zygote] = {}

    def start(
        label: str, run_dir: Path, stop_after: int | None, planted: Mapping[str, str] | None = None
    ) -> Running:
        zygote = zygotes.get(run_dir)
        process = Running(
            label, request.loop, run_dir, logs, request.cwd, request.timeout_s, stop_after, planted, zygote
        )
        running.append(process)
        return process

    def finish(process: Running, code: int, what: str) -> Process:
        done = process.wait()
        say(f"  {(done.label + ' (' + what + ')'):<44} exit {done.returncode:<3} {done.seconds:6.1f} s")
        _expect(done, code, what)
        return done

    a_what = f"uninterrupted, steps 1..{n}"
    comparison: threading.Thread | None = None
    try:
        if request.warm:  # each run its own warm interpreter, and so its own hash seed (doctor/warm.py)
            for run_dir in (run_a, run_b, run_c) if request.control else (run_a, run_b):
                zygotes[run_dir] = Zygote(child_environment({}), request.cwd)
        a = start("run A", run_a, None)
        if request.serial:
            finish(a, 0, a_what)
        resumed_from = 0
        for stop in stops:
            label = "run B" if not resumed_from else "run B resumed"
            b = start(label, run_b, stop)
            if comparison is None:  # run A and run B are under way (their interpreters warm)
                comparison = _import_beside_the_runs("trm_cluster.doctor.compare")
            finish(b, EXIT_STOPPED, f"stopped after step {stop}")
            if request.control and not resumed_from:  # the control resumes from the first stop too
                shutil.copytree(run_b, run_c)
            resumed_from = stop
        b_resumed = start("run B resumed", run_b, None)
        if not request.serial:
            finish(a, 0, a_what)
        resumed = finish(b_resumed, 0, f"fresh process, steps {resumed_from + 1}..{n}")
        if request.control:
            skipped = {SKIP_RNG_RESTORE_ENV: "1"}
            finish(
                start("control", run_c, None, skipped), 0, f"resumed at step {stops[0]}, RNG restore skipped"
            )
    finally:
        for process in running:
            process.kill()
        for zygote in zygotes.values():
            zygote.close()
    _status(run_a, "run A", n)
    _status(run_b, "run B", n)
    if comparison is not None:
        comparison.join()
    from trm_cluster.doctor.compare import compare_runs  # torch: imported while the runs ran (see the top)

    a_checkpoints, b_checkpoints = Checkpoints(run_a, "run A"), Checkpoints(run_b, "run B")
    a_checkpoints.require(range(1, n + 1))
    b_checkpoints.require(range(1, n + 1))
    verdict = compare_runs(a_checkpoints, b_checkpoints, stops, n, ignore=request.ignore)
    warnings = warning_causes(resumed.text("stderr"))
    control = None
    if request.control:
        _status(run_c, "the control run", n)
        # a stream the loop never draws (left out above) is not restored either: not what the control tests
        idle = [pattern for name in verdict.idle_streams for pattern in (f"rng.{name}", f"rng.{name}.*")]
        control_run = Checkpoints(run_c, "the control run")
        control = compare_runs(a_checkpoints, control_run, stops[0], n, [*request.ignore, *idle])
    return Outcome(verdict, divergence_causes(verdict), warnings, control)
