"""Training threads on a shared machine (semid.model.training.cpu_threads; speed: benchmarks/train_under_load.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from semid.model.training import cpu_threads


def test_default_is_the_usable_cpus_whatever_the_load(monkeypatch):
    # the same seed and data give the same IDs on one machine: the count must not follow the load average
    monkeypatch.delenv("SEMID_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    for load in (0.1, 3.2, 50.0):
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, 0.0, 0.0))
        assert cpu_threads.pick_threads() == 3


def test_explicit_threads_win(monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (50.0, 0.0, 0.0))
    monkeypatch.delenv("SEMID_THREADS", raising=False)
    assert cpu_threads.pick_threads(3) == 3
    monkeypatch.setenv("SEMID_THREADS", "2")
    assert cpu_threads.pick_threads(3) == 2
    monkeypatch.setenv("SEMID_THREADS", "zero")
    with pytest.raises(ValueError, match="SEMID_THREADS"):
        cpu_threads.pick_threads()


def test_cli_sets_passive_waiting_before_openmp_loads():
    code = "import os, sys; import semid.service.cli; print(os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"


def test_checkpoint_records_the_thread_count(tmp_path, monkeypatch, tiny_catalog):
    from semid.model.training.job import train_tokenizer
    from tests.conftest import tiny_config

    monkeypatch.setenv("SEMID_THREADS", "1")
    _, metrics = train_tokenizer(tiny_catalog.embeddings, tiny_config(), tmp_path / "ck")
    assert metrics["threads"] == 1


def test_training_gives_the_callers_thread_count_back(tmp_path, monkeypatch, tiny_catalog):
    """A benchmark or notebook that trains and then goes on (e.g. trains a generator on 1 thread) must not
    inherit training's count: two spinning threads per process on a shared machine slowed such a run ~10x."""
    import torch

    from semid.model.training.job import train_tokenizer
    from tests.conftest import tiny_config

    before = torch.get_num_threads()
    monkeypatch.setenv("SEMID_THREADS", "2")
    torch.set_num_threads(1)
    try:
        _, metrics = train_tokenizer(tiny_catalog.embeddings, tiny_config(), tmp_path / "ck")
        assert metrics["threads"] == 2
        assert torch.get_num_threads() == 1
        seen = []

        def failing_fit(*args, **kwargs):
            seen.append(torch.get_num_threads())
            raise RuntimeError("fit failed")

        monkeypatch.setattr("semid.model.training.job.fit_rqvae", failing_fit)
        with pytest.raises(RuntimeError, match="fit failed"):  # and on the way out of a failed run too
            train_tokenizer(tiny_catalog.embeddings, tiny_config(), tmp_path / "bad")
        assert seen == [2] and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
