"""How many CPU threads training uses and how idle OpenMP threads wait, so a shared machine slows training
down instead of stalling it.

Training runs thousands of small tensor ops. By default torch starts one OpenMP thread per CPU, and an OpenMP
thread that finishes its share of an op spins at the barrier waiting for the others.
When other processes hold the cores,
a thread of ours is descheduled mid-op while its partner spins for a whole time slice, op after op, and training
slows by an order of magnitude (benchmarks/train_under_load.py measures it). Two remedies, both applied by the CLI:

- ``quiet_waiting()``: OMP_WAIT_POLICY=PASSIVE, so waiting threads sleep; it only takes effect if set before torch
  or faiss load their OpenMP runtime, so the `semid` entry point calls it first thing.
- ``pick_threads()``: the CPUs this process may run on (its affinity, e.g. a container's cpuset), not
  ``os.cpu_count()``. The count does not follow the machine's load: the thread count can change the last bits of
  float sums and with them a few codes, and the same seed and data must give the same IDs on the same machine.
  On a heavily shared machine ``SEMID_THREADS=1`` is faster still.

An explicit count always wins: ``SEMID_THREADS``, then ``--threads`` (``train.threads``); OMP_WAIT_POLICY set in the
environment is left alone.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

ENV_THREADS = "SEMID_THREADS"


def quiet_waiting() -> bool:
    """Make idle OpenMP threads sleep instead of spin (unless OMP_WAIT_POLICY is set). True if it can still take
    effect, False if torch or faiss (and with it the OpenMP runtime) is already loaded."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return "torch" not in sys.modules and "faiss" not in sys.modules


def usable_cpus() -> int:
    """CPUs this process may run on (its scheduler affinity, e.g. a container's cpuset), else the machine's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def pick_threads(requested: int = 0) -> int:
    """The thread count for training: SEMID_THREADS, else ``requested`` if > 0, else the usable CPUs.
    Raises ValueError on a SEMID_THREADS that is not a positive int."""
    env = os.environ.get(ENV_THREADS, "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"{ENV_THREADS} must be a positive integer, got {env!r}")
        return int(env)
    if requested > 0:
        return requested
    return usable_cpus()


def apply_threads(requested: int = 0) -> int:
    """Set torch's intra-op threads to ``pick_threads(requested)``; returns the count set."""
    import torch

    threads = pick_threads(requested)
    torch.set_num_threads(threads)
    log.info("training on %d thread(s) (OMP_WAIT_POLICY=%s)", threads, os.environ.get("OMP_WAIT_POLICY", "unset"))
    return threads


F = TypeVar("F", bound=Callable[..., Any])


def gives_threads_back(fn: F) -> F:
    """Wrap a function that sets torch's thread count (``apply_threads``) so its caller gets its own count back
    when it returns or raises: a benchmark or notebook that goes on after training keeps its threads."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import torch

        previous = torch.get_num_threads()
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(previous)

    return wrapper  # type: ignore[return-value]
