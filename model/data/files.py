"""Crash-safe file primitives, the one home of atomic writes: atomic replace, directory copy, checksums,
and the fault-injection hook of the write path. Used by checkpoints (model) and the index (service).

A file is written under a temporary name in its final directory, fsynced, renamed
over the final name with ``os.replace`` and the directory is fsynced, so readers see
either the old or the new file, never a partial one. The temporary name is random and the
file is created exclusively (``O_EXCL | O_NOFOLLOW``, ``create_temp_file``), so a file or
symlink planted at a predictable name is never written through; a symlink at the final name
is replaced, its target left alone. Every writer of ``semid.model`` and ``semid.service``
goes through these helpers.

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
import hashlib
import json
import logging
import os
import shutil
import signal
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

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


def create_temp_file(final: Path) -> tuple[Path, BinaryIO]:
    """A new, empty temporary file next to ``final`` (same directory, so rename is atomic), open for
    writing. Created exclusively and without following symlinks: an existing file or a symlink
    planted at the name makes this fail instead of being written through."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    tmp = temp_path_for(final)
    fd = os.open(tmp, flags, 0o666)
    return tmp, os.fdopen(fd, "wb")


def write_stream_atomically(final: Path, write: Callable[[BinaryIO], None], *, kind: str | None = None) -> None:
    """Call ``write(f)`` on a fresh temporary file (``create_temp_file``), fsync it, then rename it to
    ``final``. ``kind`` (``segment``, ``vectors``, ``manifest``) names the file's fault-injection steps."""

    def produce(tmp: Path, f: BinaryIO) -> None:
        write(f)
        f.flush()

    def sync(tmp: Path, f: BinaryIO) -> None:
        os.fsync(f.fileno())

    _publish(final, produce, sync, kind)


def replace_atomically(final: Path, write: Callable[[Path], None], *, kind: str | None = None) -> None:
    """Call ``write(tmp)`` to produce the file by path (for libraries that only write to a path), fsync
    it, then rename it to ``final``. ``tmp`` is created first, exclusively (``create_temp_file``).

    ``kind`` (``segment``, ``vectors``, ``manifest``) names the file's fault-injection steps.
    """

    def produce(tmp: Path, f: BinaryIO) -> None:
        f.close()  # the library opens the path itself
        write(tmp)

    def sync(tmp: Path, f: BinaryIO) -> None:
        fsync_path(tmp)

    _publish(final, produce, sync, kind)


def _publish(
    final: Path,
    produce: Callable[[Path, BinaryIO], None],
    sync: Callable[[Path, BinaryIO], None],
    kind: str | None,
) -> None:
    """The one write path of both writers above: a fresh exclusive temporary file, ``produce``, ``sync``,
    rename over ``final``, fsync the directory; the temporary file is removed on any failure. Fault points
    (when ``kind`` is given) after the write, the fsync and the rename."""
    tmp, f = create_temp_file(final)
    try:
        with f:
            produce(tmp, f)
            if kind is not None:
                fault_point(f"after-{kind}-write", tmp)
            sync(tmp, f)
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
    write_stream_atomically(final, lambda f: f.write(data), kind=kind)


def write_text_atomically(final: Path, text: str) -> None:
    write_bytes_atomically(final, text.encode("utf-8"))


def write_json_atomically(final: Path, payload: Any, *, kind: str | None = None) -> None:
    text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    write_bytes_atomically(final, text.encode("utf-8"), kind=kind)


def write_parquet_atomically(final: Path, table: Any, **options: Any) -> None:
    """``pq.write_table(table, ...)`` through ``write_stream_atomically`` (``options`` go to it)."""
    import pyarrow.parquet as pq

    write_stream_atomically(final, lambda f: pq.write_table(table, f, **options))


def copy_dir_atomically(source: Path, final: Path, *, only: list[str] | None = None) -> None:
    """Copy directory ``source`` (or just its files named in ``only``) to ``final`` via a fsynced
    temporary copy and one rename. An existing ``final`` is replaced (moved aside first, then removed).
    """
    tmp = temp_path_for(final)
    try:
        if only is None:
            shutil.copytree(source, tmp)
        else:
            tmp.mkdir(parents=True)
            for name in only:
                shutil.copy2(source / name, tmp / name)
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
