"""`semid serve --workers N`: N server processes answering on one port.

The parent binds the listening socket and starts N workers (spawned, not forked: torch and FAISS thread
pools do not survive a fork). Each worker opens the index and the checkpoint itself and holds its own
snapshot; the kernel hands each new connection to one of them. Writes from any worker are serialised
by the index's writer lock (``index.lock``), under which a worker first catches up with the others'
segments; before every request a worker checks the manifest (one ``stat``) and loads what the others
committed (``deps.catch_up``), so a write answered by one worker is seen by every worker's next request.

The parent only supervises: it waits until every worker has loaded (or stops with the first one's
error), restarts a worker that dies, and passes SIGINT/SIGTERM on to the workers.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from semid.service.api.settings import ServiceSettings
from semid.service.errors import SemidError

log = logging.getLogger(__name__)

START_TIMEOUT = 600.0  # seconds for a worker to load a large index before the start is abandoned
STOP_TIMEOUT = 10.0  # seconds for workers to finish their requests on shutdown before they are killed


class WorkerStartError(SemidError):
    """A worker could not load the index or checkpoint; its message is the worker's own error."""

    code = "worker_start_failed"


def worker_settings(settings: ServiceSettings, cpus: int | None = None) -> ServiceSettings:
    """Each worker's settings: without ``--workers-threads``, the machine's cores are split between the
    workers (at least one torch thread each) instead of each worker starting one thread per core."""
    if settings.threads:
        return settings
    cpus = cpus or os.cpu_count() or 1
    return settings.model_copy(update={"threads": max(1, cpus // settings.workers)})


def serve_workers(settings: ServiceSettings, *, log_level: str, echo: Any = print) -> None:
    """Bind ``settings.host:port``, run ``settings.workers`` worker processes on it until a signal."""
    sock = _bind(settings.host, settings.port)
    if sys.platform.startswith("linux"):
        os.environ.setdefault("MALLOC_ARENA_MAX", "2")  # see cli._cap_malloc_arenas; read by each new worker
    payload = worker_settings(settings).model_dump_json()
    context = multiprocessing.get_context("spawn")
    stopping = False

    def start() -> tuple[BaseProcess, Connection]:
        reader, writer = context.Pipe(duplex=False)
        process = context.Process(target=_worker_main, args=(payload, log_level, sock, writer), daemon=False)
        process.start()
        writer.close()
        return process, reader

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    workers: list[BaseProcess] = []
    try:
        started = [start() for _ in range(settings.workers)]
        workers = [p for p, _ in started]
        for process, reader in started:
            _await_ready(process, reader)
        echo(
            f"serving {settings.index_dir} on http://{settings.host}:{settings.port} with {settings.workers} workers "
            f"(pids {', '.join(str(p.pid) for p in workers)}; docs: /docs)"
        )
        while not stopping:
            wait([p.sentinel for p in workers], timeout=0.5)
            for i, process in enumerate(workers):
                if process.is_alive() or stopping:
                    continue
                log.warning("worker pid %s exited with code %s; starting another", process.pid, process.exitcode)
                replacement, reader = start()
                workers[i] = replacement
                _await_ready(replacement, reader)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _stop_all(workers)
        sock.close()


def _bind(host: str, port: int) -> socket.socket:
    """The shared listening socket (as uvicorn binds it; each worker's server listens on it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise WorkerStartError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def _await_ready(process: BaseProcess, reader: Connection) -> None:
    """Wait for a worker's first message: ``None`` once it serves, or its start-up error."""
    deadline = time.monotonic() + START_TIMEOUT
    while not reader.poll(0.2):
        if not process.is_alive():
            raise WorkerStartError(f"worker pid {process.pid} exited with code {process.exitcode} while starting")
        if time.monotonic() > deadline:
            raise WorkerStartError(f"worker pid {process.pid} did not load the index within {START_TIMEOUT:.0f} s")
    try:
        message = reader.recv()
    except EOFError:
        message = f"worker pid {process.pid} exited while starting"
    reader.close()
    if message is not None:
        raise WorkerStartError(message)


def _stop_all(workers: list[BaseProcess]) -> None:
    for process in workers:
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for process in workers:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()


def _worker_main(payload: str, log_level: str, sock: socket.socket, ready: Connection) -> None:
    """One worker: load the state, tell the parent, serve on the shared socket until SIGTERM."""
    import uvicorn

    from semid.service.api.app import create_app
    from semid.service.api.state import ServiceState
    from semid.service.api.transport import quiet_disconnects, serve_protocol

    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    settings = ServiceSettings.model_validate_json(payload)
    try:
        state = ServiceState.load(settings)
    except (SemidError, OSError, ValueError) as err:
        ready.send(str(err))
        ready.close()
        sys.exit(2)
    quiet_disconnects()  # per process: each worker logs its own disconnects
    config = uvicorn.Config(
        create_app(settings, state=state),
        log_level=log_level,
        access_log=False,
        http=serve_protocol(settings),  # the head cap, send deadline and connection caps, per worker
        timeout_keep_alive=5,
    )
    server = uvicorn.Server(config)
    ready.send(None)
    ready.close()
    server.run(sockets=[sock])
