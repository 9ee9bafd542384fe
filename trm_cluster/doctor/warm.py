"""A warm start for the doctor's processes: torch and the package imported once, each run forked from it.

A doctor run pays the interpreter and its imports once per process (torch alone takes seconds; the first
optimizer step imports ``torch._dynamo``), and the doctor starts four processes or more. A zygote imports
all of it once and forks a child per process; each child is still a fresh process of the loop: its own
pid, working directory, environment, stdout and stderr, and it runs the script from its first line.

What a fork would hide: a child shares its zygote's hash seed, so set and dict ordering would agree
between two runs forked from one zygote. Each run (A, B, the control) gets a zygote of its own with its
own ``PYTHONHASHSEED``, as separate interpreters would have: a loop whose result depends on that order
still differs between run A and run B (tests/doctor/test_warm.py). The processes of run B share one
seed, as a preempted job's processes do not; the resume is compared against run A, which does not share it.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

ZYGOTE = r"""
import json, os, runpy, sys, threading, traceback, atexit
import torch, torch.optim, trm_cluster.runtime.session  # what every run would import
for module in ("torch._dynamo", "torchdata.stateful_dataloader", "numpy"):  # the first optimizer step's,
    try:                                                                 # and what loops commonly use
        __import__(module)
    except Exception:
        pass
requests, replies = sys.stdin, os.fdopen(os.dup(1), "w", buffering=1)

def run(job):
    os.chdir(job["cwd"])
    os.environ.clear()
    os.environ.update(job["env"])
    for fd, path in ((1, job["stdout"]), (2, job["stderr"])):
        opened = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(opened, fd)
        os.close(opened)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    argv = job["argv"]
    code = 0
    try:
        if argv[1] == "-c":
            sys.argv, sys.path[0] = ["-c"], ""
            exec(compile(argv[2], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
        else:
            sys.argv, sys.path[0] = argv[1:], os.path.dirname(os.path.abspath(argv[1]))
            runpy.run_path(argv[1], run_name="__main__")
    except SystemExit as stop:
        if isinstance(stop.code, int) or stop.code is None:
            code = stop.code or 0
        else:
            print(stop.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    threading._shutdown()  # as the interpreter's own exit: non-daemon threads, then the atexit hooks
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)

for line in requests:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        requests.close()
        replies.close()
        run(job)
    print(json.dumps({"pid": pid}), file=replies)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"pid": pid, "exit": os.waitstatus_to_exitcode(status)}), file=replies)
os._exit(0)  # it holds nothing to flush; the interpreter's own exit would unload torch (0.8 s here)
"""


class Zygote:
    """One warm interpreter (its own hash seed) that runs one process of a loop at a time."""

    def __init__(self, env: Mapping[str, str], cwd: Path) -> None:
        self.hash_seed = str(random.SystemRandom().randrange(1, 2**32))
        self.env = {**env, "PYTHONHASHSEED": self.hash_seed}
        self.process = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE], cwd=cwd, env=self.env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert self.process.stdin is not None and self.process.stdout is not None
        self._requests: IO[str] = self.process.stdin
        self._replies = self.process.stdout.fileno()  # read raw: a buffered reader would hide a line
        self._pending = b""

    def start(
        self, argv: Sequence[str], env: Mapping[str, str], cwd: Path, stdout: Path, stderr: Path
    ) -> int:
        """Fork a child that runs ``argv`` (``python script ...`` or ``python -c code``); its pid."""
        job = {"argv": list(argv), "env": {**env, "PYTHONHASHSEED": self.hash_seed}, "cwd": str(cwd),
               "stdout": str(stdout), "stderr": str(stderr)}  # fmt: skip
        self._requests.write(json.dumps(job) + "\n")
        self._requests.flush()
        reply = self._line_before(time.monotonic() + 600)
        if not reply:
            raise OSError("the doctor's warm interpreter ended before it started a run (run with --cold)")
        return int(json.loads(reply)["pid"])

    def wait(self, pid: int, timeout_s: float) -> int | None:
        """The child's exit status (negative: the signal that ended it), or None after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            reply = self._line_before(deadline)
            if reply is None:
                return None
            if not reply:
                return -signal.SIGKILL  # the zygote itself is gone
            message = json.loads(reply)
            if message.get("pid") == pid and "exit" in message:
                return int(message["exit"])

    def _line_before(self, deadline: float) -> str | None:
        """The zygote's next line; None if none came before ``deadline`` (monotonic); "" once it is gone."""
        while b"\n" not in self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._replies], [], [], remaining)[0]:
                return None
            chunk = os.read(self._replies, 65536)
            if not chunk:
                return ""
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line.decode()

    def close(self) -> None:
        if self.process.poll() is None:
            self._requests.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
