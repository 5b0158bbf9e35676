"""Crash-safe file primitives: atomic replace, directory copy, the writer lock.

A file is written under a temporary name in its final directory, fsynced, renamed
over the final name with ``os.replace`` and the directory is fsynced, so readers see
either the old or the new file, never a partial one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from service.errors import IndexLockedError

logger = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"


def temp_path_for(final: Path) -> Path:
    """A unique temporary name next to ``final`` (same directory, so rename is atomic)."""
    return final.with_name(f"{TMP_PREFIX}{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_atomically(final: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` to produce the file, fsync it, then rename it to ``final``."""
    tmp = temp_path_for(final)
    try:
        write(tmp)
        fsync_path(tmp)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_path(final.parent)


def write_bytes_atomically(final: Path, data: bytes) -> None:
    replace_atomically(final, lambda tmp: tmp.write_bytes(data))


def write_json_atomically(final: Path, payload: Any) -> None:
    text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    write_bytes_atomically(final, text.encode("utf-8"))


def copy_dir_atomically(source: Path, final: Path) -> None:
    """Copy directory ``source`` to ``final`` via a fsynced temporary copy and one rename.

    An existing ``final`` is replaced (it is moved aside first, then removed).
    """
    tmp = temp_path_for(final)
    try:
        shutil.copytree(source, tmp)
        for root, _dirs, files in os.walk(tmp):
            for name in files:
                fsync_path(Path(root) / name)
            fsync_path(Path(root))
        if final.exists():
            old = temp_path_for(final)
            os.replace(final, old)
            shutil.rmtree(old)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_path(final.parent)


class WriterLock:
    """Exclusive ``flock`` on a lock file; the holder's pid is written into it.

    Non-blocking by default (``timeout=0``): a held lock raises ``IndexLockedError``
    at once; with ``timeout > 0`` it polls until the deadline. The lock is per open
    file, so two handles in one process exclude each other too.
    """

    def __init__(self, path: Path, *, description: str) -> None:
        self._path = path
        self._description = description
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, *, timeout: float = 0.0) -> None:
        if self._fd is not None:
            raise RuntimeError(f"{self._path} is already locked by this handle")
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _read_pid(fd)
                    os.close(fd)
                    who = f"pid {holder}" if holder is not None else "pid unknown"
                    raise IndexLockedError(
                        f"{self._description} is being written by another process ({who})", holder_pid=holder
                    ) from None
                time.sleep(0.05)
            except BaseException:
                os.close(fd)
                raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def held_for(self, *, timeout: float = 0.0) -> Iterator[None]:
        self.acquire(timeout=timeout)
        try:
            yield
        finally:
            self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
