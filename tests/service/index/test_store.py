"""The writer lock: one writer per index, across handles and processes, and the holder is named."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from semid.service.errors import IndexLockedError
from semid.service.index.store import WriterLock


def test_a_second_handle_is_refused_and_told_who_holds_the_lock(tmp_path):
    path = tmp_path / "index.lock"
    first, second = WriterLock(path, description="idx"), WriterLock(path, description="idx")
    first.acquire()
    try:
        assert path.read_text().strip() == str(os.getpid())
        with pytest.raises(IndexLockedError, match="idx is being written by another process") as err:
            second.acquire()
        assert err.value.holder_pid == os.getpid()
        assert not second.held
    finally:
        first.release()
    assert path.read_text() == ""  # the pid is cleared on release
    with second.held_for():
        assert second.held
    assert not second.held


def test_a_timeout_waits_for_the_holder_to_finish(tmp_path):
    path = tmp_path / "index.lock"
    script = (
        "import pathlib, sys; from semid.service.index.store import WriterLock; "
        f"lock = WriterLock(pathlib.Path({str(path)!r}), description='idx'); lock.acquire(); "
        "print('held', flush=True); sys.stdin.readline(); lock.release(); print('released', flush=True); "
        "sys.stdin.readline()"
    )
    holder = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(IndexLockedError) as err:
            WriterLock(path, description="idx").acquire()  # timeout 0: refused at once
        assert err.value.holder_pid == holder.pid
        release = threading.Timer(0.3, lambda: (holder.stdin.write("go\n"), holder.stdin.flush()))
        release.start()
        lock = WriterLock(path, description="idx")
        lock.acquire(timeout=120)  # polls until the other process lets go
        release.join()
        assert lock.held
        assert holder.stdout.readline().strip() == "released"
        lock.release()
    finally:
        holder.kill()
        holder.wait()


def test_acquiring_twice_on_one_handle_is_a_programming_error(tmp_path):
    lock = WriterLock(tmp_path / "index.lock", description="idx")
    with lock.held_for():
        with pytest.raises(RuntimeError, match="already locked by this handle"):
            lock.acquire()
    lock.release()  # releasing an unheld lock is a no-op
