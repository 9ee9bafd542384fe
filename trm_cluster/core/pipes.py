"""A command whose reader leaves early (``status RUN | head -1``) ends quietly, as a Unix tool killed by
SIGPIPE would (exit status 141), instead of with a BrokenPipeError traceback."""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from typing import Protocol


class Main(Protocol):
    def __call__(self, argv: list[str] | None = None) -> int: ...


def quiet_on_broken_pipe(main: Callable[[list[str] | None], int]) -> Main:
    """Wrap a command's ``main(argv)``; the console scripts and ``python -m`` both call the wrapper."""

    @functools.wraps(main)
    def guarded(argv: list[str] | None = None) -> int:
        try:
            code = main(argv)
            sys.stdout.flush()  # inside the try: the interpreter's own flush at exit would complain again
            return code
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)  # Python's docs: leave nothing to flush at exit
            os.dup2(devnull, sys.stdout.fileno())
            return 128 + signal.SIGPIPE

    return guarded
