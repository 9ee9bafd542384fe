"""Atomic file replacement: a reader sees the old file or the new one, never a torn one.

Write to a temporary file in the same directory, fsync it, ``os.replace`` it over the target, then
fsync the directory so the rename itself survives a crash. The temporary file may be an old file that
is no longer needed (``reuse``), overwritten in place: its blocks are already allocated, which made a 1 GB
checkpoint save several times faster here than writing a new file (docs/performance.md). Every durable
write in the package goes through here, so there is one place where tests can pause a write (``TRM_CLUSTER_PAUSE_IN_WRITE``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

PAUSE_ENV = "TRM_CLUSTER_PAUSE_IN_WRITE"
"""Test seam: ``"<substring of the target file name>:<seconds>"`` sleeps after the temp file is
written and before it replaces the target, so a test can kill a process mid-write."""


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(target: Path, mode: str = "wb", reuse: Path | None = None) -> Iterator[IO[bytes]]:
    """Yield a file to write; on clean exit it atomically becomes ``target``; on error it vanishes.

    ``reuse``: a file in the same directory to write over in place, when it exists (it is renamed to
    the temporary name first, so it is gone whatever happens); binary mode only."""
    make_private_dirs(target.parent)
    tmp, handle = _temporary(target, mode, reuse)
    try:
        with handle:
            yield handle
            handle.flush()
            handle.truncate()  # a reused file was longer: its old tail goes
            os.fsync(handle.fileno())
        _maybe_pause(target)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(target.parent)


def _temporary(target: Path, mode: str, reuse: Path | None) -> tuple[Path, IO[bytes]]:
    """The temporary file beside ``target`` (its name as :func:`stale_temp_files` finds it), opened."""
    if reuse is not None and mode == "wb":
        tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.rename(reuse, tmp)
        except FileNotFoundError:
            pass
        else:
            return tmp, open(tmp, "r+b")  # closed by the caller's with
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    return Path(tmp_name), os.fdopen(fd, mode)


def make_private_dirs(directory: Path) -> None:
    """``mkdir -p`` whose new folders no group or other user can write, whatever the umask (a
    world-writable run folder would let anyone swap a checkpoint or the manifest)."""
    missing = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by another process
            folder.mkdir()  # 0o777 less the umask; then never group or world write
            folder.chmod(folder.stat().st_mode & 0o7777 & ~0o022)


def stale_temp_files(target: Path) -> list[Path]:
    """Temp files of ``target`` that an ``atomic_writer`` left behind when its process was killed.

    Only stale when no writer of ``target`` can be running (the caller holds the target's lock).
    """
    return sorted(target.parent.glob(f".{target.name}.*.tmp"))


def atomic_write_bytes(target: Path, data: bytes) -> None:
    with atomic_writer(target) as handle:
        handle.write(data)


def _maybe_pause(target: Path) -> None:
    spec = os.environ.get(PAUSE_ENV)
    if not spec:
        return
    pattern, _, seconds = spec.rpartition(":")
    if pattern and pattern in target.name:
        time.sleep(float(seconds))
