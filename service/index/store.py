"""Crash-safe file primitives: atomic replace, directory copy, the writer lock, checksums,
and the fault-injection hook of the write path.

A file is written under a temporary name in its final directory, fsynced, renamed
over the final name with ``os.replace`` and the directory is fsynced, so readers see
either the old or the new file, never a partial one.

Fault injection (tests only): ``SEMID_FAULT=<step>`` makes the process SIGKILL itself
when the write path reaches ``<step>``; ``SEMID_FAULT=<step>:<n>`` at the n-th time it
does. Steps are ``after-<file>-write`` (temporary file written, not fsynced),
``after-<file>-fsync`` (fsynced, not renamed) and ``after-<file>-rename`` (renamed, the
directory not fsynced) for ``<file>`` in ``segment``, ``vectors`` (faiss.index) and
``manifest``. ``SEMID_FAULT=enospc-<file>-<stage>`` (or ``erofs-``, ``eio-``) raises
that ``OSError`` at the step instead, as a full disk or read-only file system would.
Unset, the hook costs one environment look-up per step.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from semid.service.errors import IndexLockedError

logger = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
FAULT_ENV = "SEMID_FAULT"
FAULT_FILES = ("segment", "vectors", "manifest")
CRASH_STEPS = tuple(f"after-{kind}-{stage}" for kind in FAULT_FILES for stage in ("write", "fsync", "rename"))
_FAULT_ERRNOS = {"enospc": errno.ENOSPC, "erofs": errno.EROFS, "eio": errno.EIO}
_fault_hits: dict[str, int] = {}


def fault_point(step: str, path: Path | None = None) -> None:
    """Test hook: SIGKILL this process, or raise an ``OSError``, if ``SEMID_FAULT`` names ``step``."""
    wanted = os.environ.get(FAULT_ENV)
    if not wanted:
        return
    name, _, nth = wanted.partition(":")
    action, _, rest = name.partition("-")
    code = _FAULT_ERRNOS.get(action)
    if name != step and (code is None or f"after-{rest}" != step):
        return
    _fault_hits[step] = _fault_hits.get(step, 0) + 1
    if nth and _fault_hits[step] != int(nth):
        return
    if code is None:
        logger.warning("%s=%s: killing pid %d at %s", FAULT_ENV, wanted, os.getpid(), step)
        os.kill(os.getpid(), signal.SIGKILL)
    raise OSError(code, os.strerror(code), None if path is None else str(path))


def sha256_bytes(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def temp_path_for(final: Path) -> Path:
    """A unique temporary name next to ``final`` (same directory, so rename is atomic)."""
    return final.with_name(f"{TMP_PREFIX}{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_atomically(final: Path, write: Callable[[Path], None], *, kind: str | None = None) -> None:
    """Call ``write(tmp)`` to produce the file, fsync it, then rename it to ``final``.

    ``kind`` (``segment``, ``vectors``, ``manifest``) names the file's fault-injection steps.
    """
    tmp = temp_path_for(final)
    try:
        write(tmp)
        if kind is not None:
            fault_point(f"after-{kind}-write", tmp)
        fsync_path(tmp)
        if kind is not None:
            fault_point(f"after-{kind}-fsync", tmp)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if kind is not None:
        fault_point(f"after-{kind}-rename", final)
    fsync_path(final.parent)


def write_bytes_atomically(final: Path, data: bytes | memoryview, *, kind: str | None = None) -> None:
    replace_atomically(final, lambda tmp: _write_all(tmp, data), kind=kind)


def write_json_atomically(final: Path, payload: Any, *, kind: str | None = None) -> None:
    text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    write_bytes_atomically(final, text.encode("utf-8"), kind=kind)


def _write_all(path: Path, data: bytes | memoryview) -> None:
    with path.open("wb") as f:
        f.write(data)


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
