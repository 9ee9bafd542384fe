"""Shared test helpers: run the real CLIs in subprocesses and read back what they left on disk.

The one place for helpers that more than one test file uses (tests/trm_testing.py: the peptide-trm
configurations; tests/conftest.py: the fixtures; tests/ci_guard.py: the skip-or-fail plugin). A module of
its own, imported as ``from support import ...`` from any folder under tests/ (``pythonpath`` in
pyproject.toml): a test module never imports another test module, nor ``conftest``.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from trm_cluster.wandb import files as wandb_files
from trm_cluster.wandb.writers import wait_for_writers

REPO = Path(__file__).resolve().parent.parent


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a child: no W&B credentials or settings leaking in, offline W&B."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "SUBMITIT_"))}
    env.update(WANDB_SILENT="true", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def cli(
    module: str, *args: str, cwd: Path, timeout: float = 600, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m trm_cluster.MODULE ARGS`` and wait until the W&B writer it started has ended too.

    Why the wait: wandb-core outlives its parent for a moment and still flushes, so what a test reads
    next (a ``.wandb`` file, the W&B logs) would still be changing under it.
    """
    argv = [sys.executable, "-m", f"trm_cluster.{module}", *args]
    with subprocess.Popen(
        argv, cwd=cwd, env=clean_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    assert wait_for_writers([proc.pid]) == [], f"wandb-core of {argv} never ended"
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


LOCAL_RUN = ("--preset", "regression", "--wandb-mode", "offline", "--executor", "local", "--wait")
"""A regression run on submitit's local executor, W&B offline, ``submit`` waiting for its end."""


def start_local_run(workdir: Path, run_dir: Path, *extra: str, **env: str) -> subprocess.Popen[str]:
    """``submit`` of a ``LOCAL_RUN`` (and ``extra``) into ``run_dir``, not waited for: its pipes are read
    by ``communicate()``."""
    return subprocess.Popen(
        [sys.executable, "-m", "trm_cluster.submit", *LOCAL_RUN, "--run-dir", str(run_dir), *extra],
        cwd=workdir, env=clean_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def wait_for(condition: Callable[[], Any], timeout: float = 120, what: str = "condition not reached") -> Any:
    """What ``condition()`` returns, once it is true (an event, however slow the machine). A manifest not
    written yet, or being replaced, counts as not yet (FileNotFoundError, ValueError, KeyError, IndexError);
    after ``timeout`` seconds, ``TimeoutError(what)``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            value = condition()
        except (FileNotFoundError, ValueError, KeyError, IndexError):
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(what)


def open_segment_pid(run_dir: Path, timeout: float = 120) -> int:
    """The pid of the run's open segment (the task that trains it), once there is one."""

    def pid() -> int | None:
        segments = manifest(run_dir)["segments"]
        return int(segments[-1]["pid"]) if segments and segments[-1]["end_reason"] is None else None

    return int(wait_for(pid, timeout, "no running segment"))


def wait_for_checkpoint(run_dir: Path, step: int, timeout: float = 120) -> None:
    """Until the manifest publishes a checkpoint at ``step`` or later."""
    wait_for(
        lambda: any(c["step"] >= step for c in manifest(run_dir)["checkpoints"]),
        timeout,
        f"no checkpoint at step {step}",
    )


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting to be reaped is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (the local executor's tasks are its controller's)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (a process group's rendezvous)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def manifest(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "manifest.json").read_text())


def status_json(run_dir: Path, cwd: Path) -> dict[str, Any]:
    result = cli("status", str(run_dir), "--json", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under root and the sha256 of its bytes: 'nothing on disk changed' is equality.

    A symbolic link counts as its target's path, not the target's bytes: W&B links each run's
    ``logs/debug-core.log`` to ``~/.cache/wandb/logs/core-debug-<second>.log``, which every wandb-core
    started in that second appends to (another test's, say), so following it would see a change outside
    the tree."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): (
            f"link to {os.readlink(p)}" if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()
        )
        for p in sorted(root.rglob("*"))
        if (p.is_symlink() or p.is_file()) and not p.name.endswith(".lock")
    }


def wandb_history(run_dir: Path) -> list[wandb_files.WandbSegment]:
    return [wandb_files.read_segment(p) for p in wandb_files.find_segments(run_dir)]


def assert_one_continuous_wandb_run(
    run_dir: Path, expected_steps: list[int]
) -> list[wandb_files.WandbSegment]:
    """All segments share the manifest's run id; together they hold each expected step exactly once."""
    segments = wandb_history(run_dir)
    run_id = manifest(run_dir)["wandb"]["run_id"]
    assert segments, "no .wandb files were written"
    # a file whose wandb-core died before its first flush holds only the header: no id, no rows
    assert {s.run_id for s in segments if s.run_id is not None or s.steps} == {run_id}
    steps = [step for s in segments for step in s.steps]
    assert len(steps) == len(set(steps)), f"duplicated W&B steps: {sorted(steps)}"
    assert sorted(steps) == expected_steps
    return segments


def final_checkpoint_payload(run_dir: Path) -> dict[str, Any]:
    """The newest checkpoint the manifest publishes, loaded as the job loads it (``weights_only``).

    Fails when there is none, when its file is missing, or when its bytes are not the recorded ones.
    """
    records = manifest(run_dir)["checkpoints"]
    assert records, f"{run_dir} publishes no checkpoint"
    path = run_dir / records[-1]["file"]
    assert path.is_file(), f"{path}, the newest checkpoint in the manifest, is missing"
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == records[-1]["sha256"], f"{path} does not match its record"
    payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    assert isinstance(payload, dict) and payload, f"{path} holds {type(payload).__name__}, not a payload"
    return payload


def assert_same_state(expected: Any, actual: Any, ignore: Iterable[str] = ("meta.saved_at",)) -> None:
    """Two (nested) states are the same, bit for bit, except at the ``ignore`` paths (see
    :func:`state_differences`); the error lists every difference with its path."""
    problems = state_differences(expected, actual, ignore)
    assert not problems, f"{len(problems)} difference(s), expected vs actual:\n  " + "\n  ".join(problems)


def state_differences(expected: Any, actual: Any, ignore: Iterable[str] = ("meta.saved_at",)) -> list[str]:
    """Every difference between two (nested) states, as ``path: what differs``.

    Tensors: same dtype, shape and bytes; floats: same bits (``float.hex``); other values: same type
    and ``==``; dicts: the same keys; lists and tuples: same type and length. A path is dotted
    (``trainer.optimizer.state.0.exp_avg``); an ``ignore`` pattern (fnmatch, ``*`` for any part) skips
    that path and everything under it.
    """
    problems: list[str] = []
    _compare(expected, actual, "", tuple(ignore), problems)
    return problems


def _compare(a: Any, b: Any, path: str, ignore: tuple[str, ...], problems: list[str]) -> None:
    where = path or "<root>"
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.dtype != b.dtype or a.shape != b.shape:
            problems.append(f"{where}: {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}")
        elif not torch.equal(_bytes(a), _bytes(b)):
            problems.append(f"{where}: {int((_bytes(a) != _bytes(b)).sum())} byte(s) differ")
    elif isinstance(a, Mapping) and isinstance(b, Mapping):
        keys = {key: f"{path}.{key}" if path else str(key) for key in [*a, *b]}
        for key, sub in keys.items():
            if any(fnmatch.fnmatchcase(sub, pattern) for pattern in ignore):
                continue
            if key not in b:
                problems.append(f"{sub}: missing")
            elif key not in a:
                problems.append(f"{sub}: extra")
            else:
                _compare(a[key], b[key], sub, ignore, problems)
    elif isinstance(a, list | tuple) and type(a) is type(b):
        if len(a) != len(b):
            problems.append(f"{where}: {len(a)} vs {len(b)} items")
        for index, (x, y) in enumerate(zip(a, b, strict=False)):
            sub = f"{path}.{index}" if path else str(index)
            if not any(fnmatch.fnmatchcase(sub, pattern) for pattern in ignore):
                _compare(x, y, sub, ignore, problems)
    elif type(a) is not type(b):
        problems.append(f"{where}: {type(a).__name__} {a!r:.60} vs {type(b).__name__} {b!r:.60}")
    elif not _same_value(a, b):
        problems.append(f"{where}: {a!r:.60} vs {b!r:.60}")


def _same_value(a: Any, b: Any) -> bool:
    """Floats by their bits (a NaN equals itself, -0.0 is not 0.0); anything else by ``==``."""
    return a.hex() == b.hex() if isinstance(a, float) else bool(a == b)


def _bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


RUN_IDENTITY = ("meta.saved_at", "meta.run_uid", "meta.run_name")
"""What two runs of the same training never share: when the checkpoint was saved, and which run it is."""

TIMINGS = ("trainer/steps_per_s", "train/spectra_per_s", "train/step_time_s")
"""Logged metrics that measure the machine, not the training: the core's speed, and the TRM trainer's."""


def assert_same_training_state(reference: Path, run_dir: Path, ignore: Iterable[str] = ()) -> None:
    """The final checkpoints of two runs are the same but for who and when (and ``ignore``, e.g. a
    config field the runs set apart on purpose): model, optimizer, EMA, schedule, data position, RNG,
    step, config, the W&B row journal and log window.

    A process journals only the rows it logs itself, so a resumed run's journal holds the unbroken
    run's rows from where that process took over (above ``complete_above``; a bare row list, as older
    checkpoints hold, must be a tail): the same rows, step for step, on every metric but the timings.
    """
    expected, actual = final_checkpoint_payload(reference), final_checkpoint_payload(run_dir)
    # a log window cut by the checkpoint holds the timings' sums and last values (their counts must match)
    window = tuple(f"tracking.window.{part}.{name}" for part in ("sum", "last") for name in TIMINGS)
    assert_same_state(expected, actual, ignore=(*RUN_IDENTITY, *window, "tracking.journal", *ignore))
    (reference_rows, _), (rows, complete_above) = _journal(expected), _journal(actual)
    assert rows, f"the final checkpoint of {run_dir} journals no W&B row"
    if complete_above is None:
        wanted = reference_rows[-len(rows) :]
    else:
        wanted = [row for row in reference_rows if row["step"] > complete_above]
        assert_same_state(
            expected["tracking"]["journal"], actual["tracking"]["journal"], ignore=("rows", "complete_above")
        )
    timings = tuple(f"journal_rows.*.metrics.{name}" for name in TIMINGS)
    assert_same_state({"journal_rows": wanted}, {"journal_rows": rows}, ignore=timings)


def _journal(payload: Mapping[str, Any]) -> tuple[list[dict[str, Any]], int | None]:
    """A checkpoint's W&B rows, and the step above which they are complete (None: not recorded)."""
    journal = payload["tracking"]["journal"]
    if isinstance(journal, Mapping):
        return list(journal["rows"]), int(journal["complete_above"])
    return list(journal), None


BOOKKEEPING_CONFIG = {"run": {"steps": 10}, "job": {}}


def new_run(run_dir: Path, max_requeues: int = 3) -> Any:
    """A real, fresh run manifest (``RunManifest``; no segment, no checkpoint) for bookkeeping tests."""
    from trm_cluster.rundir.manifest import ManifestData, RunManifest, WandbInfo, config_hash

    manifest = RunManifest(run_dir)
    manifest.create(
        ManifestData(
            name=run_dir.name, run_uid="uid", workload="m:W", config=BOOKKEEPING_CONFIG,
            config_hash=config_hash(BOOKKEEPING_CONFIG), total_steps=10,
            wandb=WandbInfo(project="p", entity=None, run_id="abcd1234", mode="offline"),
            max_requeues=max_requeues,
        )
    )  # fmt: skip
    return manifest


def this_process() -> Any:
    """The ``JobContext`` of this (test) process, as a directly called job sees itself."""
    from trm_cluster.core.job_context import JobContext

    return JobContext(
        "process", str(os.getpid()), None, 0, socket.gethostname(), os.getpid(), 0, 1, time.time()
    )


def answer_of(command: Any, argv: list[str]) -> tuple[int, str]:
    """A command's exit status and stderr, run in this process (as its console script would be)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = command(argv)
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 2
    return int(code or 0), err.getvalue()


def fuzz_examples(n: int) -> Any:
    """Hypothesis settings of the fuzz tests: ``n`` examples, no per-example deadline (each example may
    start a command and read a run; the machine is shared and slow)."""
    from hypothesis import HealthCheck, settings

    return settings(max_examples=n, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def small_script(session: str) -> str:
    """A user's own training script (argparse ``--lr``, a linear model), with ``session`` the arguments
    of its ``trm_cluster.session(...)``; it prints ``after the loop at step N lr X`` once it is done."""
    return f"""
import argparse, torch, trm_cluster
parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=0.1)
args = parser.parse_args()
model = torch.nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
with trm_cluster.session({session}) as run:
    run.restore(model=model, optimizer=optimizer)
    for step in run.steps():
        loss = model(torch.randn(8, 4)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        run.log({{"loss": loss.item()}})
    print("after the loop at step", run.step, "lr", args.lr, flush=True)
"""


def round_trip(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` through torch.save and torch.load(weights_only=True), as a checkpoint is loaded."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded: dict[str, Any] = torch.load(buffer, weights_only=True)
    return loaded
