"""The index's writer lock; the crash-safe file primitives it writes with live in :mod:`semid.model.data.files`."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from semid.model.data.files import (
    CRASH_STEPS,
    FAULT_ENV,
    TMP_PREFIX,
    copy_dir_atomically,
    create_temp_file,
    fault_point,
    fsync_path,
    replace_atomically,
    sha256_bytes,
    sha256_file,
    temp_path_for,
    write_bytes_atomically,
    write_json_atomically,
)
from semid.service.errors import IndexLockedError

__all__ = [
    "CRASH_STEPS",
    "FAULT_ENV",
    "TMP_PREFIX",
    "WriterLock",
    "copy_dir_atomically",
    "create_temp_file",
    "fault_point",
    "fsync_path",
    "replace_atomically",
    "sha256_bytes",
    "sha256_file",
    "temp_path_for",
    "write_bytes_atomically",
    "write_json_atomically",
]

logger = logging.getLogger(__name__)


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
