"""``python -m trm_cluster.doctor``: prove, before spending cluster time, that a loop resumes exactly.

::

    python -m trm_cluster.doctor --script train.py [--script-args ...] [--steps N --at K]
    python -m trm_cluster.doctor --preset regression [--steps N --at K]

It runs the loop three times, each in a fresh process, with W&B disabled and a checkpoint and a logged
row after every step: run A uninterrupted for N steps; run B stopped after step K (as a preemption
would stop it: saved, segment closed, exit status 75), then resumed in another process up to N. Then
it compares B's checkpoint of every step from K to N with A's: every tensor bit for bit, every other
value, every key, and every metric the resumed process logged (doctor/compare.py), and reports
``exact`` or the first step where they diverge, with the diverging keys and the likely causes.

Exit status: 0 exact; 1 not exact; 2 bad input (one line on stderr, nothing written); 3 the loop
could not be tested (a run crashed, did not stop or saved no checkpoint; its last lines are shown).
See docs/doctor.md.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from trm_cluster.core.process_exit import skip_final_collections
from trm_cluster.doctor.errors import BadInput, Untestable
from trm_cluster.doctor.runs import Loop, Outcome, PresetLoop, Request, ScriptLoop, examine
from trm_cluster.rundir.manifest import ManifestError

if TYPE_CHECKING:
    from trm_cluster.doctor.causes import Cause

# The runs are doctor/runs.py, the comparison doctor/compare.py, the causes doctor/causes.py; torch is
# imported only once the runs are under way: a bad request is answered before the seconds it takes.

PROG = "python -m trm_cluster.doctor"
DEFAULT_STEPS = 20
EXIT_EXACT, EXIT_NOT_EXACT, EXIT_BAD_INPUT, EXIT_UNTESTABLE = 0, 1, 2, 3
DEFAULT_TIMEOUT_S = 1800.0
SHOWN_KEYS = 12


# -- the command line ---------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise BadInput(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Prove that a loop resumes exactly: run it uninterrupted, and stopped and resumed, "
        "in fresh processes, and compare every checkpoint and metric after the resume.",
        epilog="Everything after --script-args (or a bare --) goes to the script. Exit status: 0 exact, "
        "1 not exact, 2 bad input, 3 the loop could not be tested. See docs/doctor.md.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", help="a preset name from jobs/ or a path to a preset .toml")
    source.add_argument(
        "--script", type=Path, help="your own training script (it opens trm_cluster.session())"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help=f"N: steps of each run (default {DEFAULT_STEPS})"
    )
    parser.add_argument(
        "--at",
        default=None,
        help="K or K1,K2,...: stop after each and resume in a fresh process (default: two stops close "
        "together, N//2 and a step or two later)",
    )
    parser.add_argument("--keep", type=Path, default=None, help="work in DIR (absent or empty) and keep it")
    parser.add_argument(
        "--cwd", type=Path, default=None, help="working directory of the runs (default: this one)"
    )
    parser.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="PATTERN",
        help="also leave out checkpoint keys or metrics matching this fnmatch pattern (repeatable)",
    )
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds each run may take (default 1800)"
    )
    parser.add_argument(
        "--control",
        action="store_true",
        help="also resume once with the RNG restore skipped, to show that the comparison catches it "
        "(a control that does not diverge makes the loop untestable: exit 3)",
    )
    parser.add_argument(
        "--cold",
        action="store_true",
        help="start every process as a fresh interpreter (default: forked from a warm one per run, which "
        "imported torch and the package once)",
    )
    parser.add_argument(
        "--serial",
        action="store_true",
        help="run A, then B (default: A alongside B; use this for a GPU too small for two runs)",
    )
    return parser


def parse(argv: Sequence[str]) -> Request:
    argv, script_args = _split_script_args(list(argv))
    args = build_parser().parse_args(argv)
    steps = DEFAULT_STEPS if args.steps is None else args.steps
    if steps < 2:
        raise BadInput(f"--steps {steps}: a resume test needs at least 2 steps")
    stops = default_stops(steps) if args.at is None else _stops(args.at, steps)
    if args.timeout <= 0:
        raise BadInput(f"--timeout {args.timeout}: must be positive")
    cwd = (args.cwd or Path.cwd()).expanduser().resolve()
    if not cwd.is_dir():
        raise BadInput(f"--cwd {args.cwd}: no such directory")
    keep = args.keep.expanduser().resolve() if args.keep is not None else None
    if keep is not None and keep.exists() and (not keep.is_dir() or any(keep.iterdir())):
        raise BadInput(f"--keep {args.keep}: exists and is not an empty directory")
    loop: Loop
    if args.script is not None:
        script = args.script.expanduser().resolve()
        if not script.is_file():
            raise BadInput(f"--script {args.script}: no such file")
        loop = ScriptLoop(script, list(script_args or []))
    else:
        if script_args is not None:
            raise BadInput("--script-args passes arguments to a --script; a --preset takes none")
        loop = PresetLoop.load(args.preset, steps)
    return Request(
        steps,
        stops,
        cwd,
        keep,
        list(args.ignore),
        args.timeout,
        args.serial,
        loop,
        args.control,
        not args.cold,
    )


def default_stops(steps: int) -> tuple[int, ...]:
    """Two stops close together (the same epoch or curriculum stage, as a busy cluster makes them): the
    middle and a step or two later; one stop in a run too short for two."""
    first = max(steps // 2, 1)
    second = min(first + max(steps // 10, 1), steps - 1)
    return (first, second) if second > first else (first,)


def _stops(given: str, steps: int) -> tuple[int, ...]:
    try:
        stops = sorted({int(part) for part in given.split(",")})
    except ValueError:
        raise BadInput(f"--at {given}: give step numbers, e.g. --at 7 or --at 7,14") from None
    for stop in stops:
        if not 1 <= stop <= steps - 1:
            raise BadInput(
                f"--at {stop}: the stop must fall inside the run, 1..{steps - 1} for --steps {steps}"
            )
    return tuple(stops)


def _split_script_args(argv: list[str]) -> tuple[list[str], list[str] | None]:
    for i, arg in enumerate(argv):
        if arg in ("--script-args", "--"):
            return argv[:i], argv[i + 1 :]
    return argv, None


# -- the report ---------------------------------------------------------------------------------------


def report(outcome: Outcome, say: Any = print) -> int:
    code = _report_verdict(outcome, say)
    control = outcome.control
    if control is None:
        return code
    k = control.resume_at
    if control.first is not None:
        kinds = ", ".join(f"{kind} at step {step}" for kind, (step, _) in control.first_by_kind().items())
        say(f"control: resumed at step {k} with the RNG restore skipped, it diverges ({kinds}): the "
            "comparison catches a resume that leaves state behind")  # fmt: skip
        return code
    say(f"control: resumed at step {k} with the RNG restore skipped, it still matches the uninterrupted run: "
        "no random number this loop draws reaches what is compared, so the comparison cannot tell a good "
        "resume from one that forgets the RNG; draw from the restored streams (dropout, augmentation) "
        "or check such a loop by its data and metrics")  # fmt: skip
    return EXIT_UNTESTABLE if code == EXIT_EXACT else code


def _report_verdict(outcome: Outcome, say: Any) -> int:
    verdict, k, n = outcome.verdict, outcome.verdict.resume_at, outcome.verdict.total_steps
    tally = verdict.tally
    counted = (
        f"compared {len(verdict.steps)} checkpoints ({tally.tensors} tensors, {tally.values} other values) "
        f"and {len(tally.metrics)} logged metric values"
    )
    left_out = [f"timings {', '.join(verdict.ignored_metrics)}"] if verdict.ignored_metrics else []
    if verdict.idle_counters:
        left_out.append(
            f"{', '.join(verdict.idle_counters)}: torchdata's sampler counters of an iterable dataset, "
            "counted twice by its replay and read by nothing"
        )
    if verdict.idle_streams:
        names = ", ".join(f"rng.{name}" for name in verdict.idle_streams)
        left_out.append(
            f"{names}: never seeded (differs between the runs) and never drawn from (the same in every "
            "checkpoint of each run); seed it if the loop ever uses it"
        )
    first, resumes = verdict.first, _resumes(verdict.stops)
    if first is None:
        say(f"exact: steps {k + 1}..{n} after {resumes} match the uninterrupted run bit for bit")
        say(f"  {counted}")
        _say_left_out(left_out, say)
        if outcome.warnings:
            say("  but the resumed process warned (no divergence in this test; a longer one may show it):")
            _say_causes(outcome.warnings, say)
        return EXIT_EXACT
    after, stop = verdict.diverging_after_resume, verdict.stop_before(first.step)
    where = (
        f"before the resume (at step {k})"
        if first.step <= k
        else f"{first.step - stop} step(s) after the resume at step {stop}"
    )
    say(f"NOT EXACT: first divergence at step {first.step}, {where}")
    say(f"  {len(after)} of the {n - k} steps after {resumes} differ; {counted}")
    _say_left_out(left_out, say)
    say("  first divergence of each kind (step: keys or metrics then):")
    for kind, (step, count) in verdict.first_by_kind().items():
        say(f"    {kind}: step {step} ({count})")
    if first.state:
        say(f"  diverging keys at step {first.step} ({len(first.state)}), uninterrupted vs resumed:")
        for difference in first.state[:SHOWN_KEYS]:
            say(f"    {difference.path}: {difference.detail}")
        if len(first.state) > SHOWN_KEYS:
            say(f"    ... and {len(first.state) - SHOWN_KEYS} more")
    if first.metrics:
        say(f"  diverging metrics at step {first.step} ({len(first.metrics)}):")
        for metric in first.metrics[:SHOWN_KEYS]:
            say(f"    metric {metric.describe()}")
        if len(first.metrics) > SHOWN_KEYS:
            say(f"    ... and {len(first.metrics) - SHOWN_KEYS} more")
    say("likely causes:")
    _say_causes(outcome.warnings + outcome.causes, say)
    return EXIT_NOT_EXACT


def _steps(stops: Sequence[int]) -> str:
    return f"step {stops[0]}" if len(stops) == 1 else "steps " + ", ".join(map(str, stops))


def _resumes(stops: Sequence[int]) -> str:
    return f"the resume at step {stops[0]}" if len(stops) == 1 else f"the resumes at {_steps(stops)}"


def _say_left_out(left_out: Sequence[str], say: Any) -> None:
    for line in left_out:
        say(f"  left out: {line}")


def _say_causes(causes: Sequence[Cause], say: Any) -> None:
    for cause in causes:
        say(f"  - {cause.title}")
        say(f"    {cause.detail}")


@contextlib.contextmanager
def workspace(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    path = Path(tempfile.mkdtemp(prefix="trm-doctor-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    skip_final_collections()
    started = time.monotonic()
    try:
        request = parse(sys.argv[1:] if argv is None else argv)
    except BadInput as error:
        print(f"trm-doctor: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    n = request.steps
    print(f"resume doctor: {request.loop.describe()}", flush=True)
    print(f"  {n} steps uninterrupted vs stopped after {_steps(request.stops)} and resumed in a fresh process "
          "each time (W&B disabled, a checkpoint and a row after every step)", flush=True)  # fmt: skip
    code = EXIT_UNTESTABLE
    with workspace(request.keep) as work:
        try:
            outcome = examine(request, work, say=lambda line: print(line, flush=True))
            code = report(outcome)
        except (Untestable, ManifestError) as error:
            print(f"cannot test: {error}", flush=True)
        except Exception:  # a fault of the doctor or of a file it reads: not a verdict on the loop
            traceback.print_exc()
            print("cannot test: the doctor failed (traceback above)", flush=True)
        if request.keep is not None:
            print(f"kept the runs and their logs in {work}")
    print(f"wall time {time.monotonic() - started:.1f} s")
    return code
