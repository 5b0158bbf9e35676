"""What hostile connections cost a real `semid serve` on loopback, with the transport bounds of issue 22.

    semid quickstart --out qs --items 50000 --dim 16 --epochs 5     # set-up (not measured): any index works
    python benchmarks/transport_bounds.py --index qs/index

`semid serve --index DIR --log-level info` (the default level) starts as a subprocess with
SEMID_SEND_TIMEOUT=--send-timeout and every other setting at its default. Three phases, each while a
separate thread polls GET /healthz every 20 ms (its slowest answer is reported) and the server's RSS is
sampled every 20 ms (psutil):

* head: one client sends `GET /v1/trie` with an `If-None-Match` of --header-mb MB, 1 MB at a time,
  until the server answers or it is all sent: the status, bytes sent, seconds to the answer.
* slow readers: --readers clients (each from its own 127.0.x.y address) pipeline 4 `GET /v1/trie`
  with a 4 KiB receive buffer and read nothing: seconds until the server holds none of their
  connections (psutil's view of its TCP connections), and the most it held.
* disconnects: --readers clients each send half a JSON body to `POST /v1/encode` and go away (every
  other one with a reset): the server log lines they add.

Writes benchmarks/results/transport_bounds.{md,json}.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import markdown_table, write_results  # noqa: E402
from tests.servers import Server  # noqa: E402


class Watch:
    """/healthz latency and server RSS, sampled every 20 ms in a thread while a phase runs."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.proc = psutil.Process(server.proc.pid)
        self.worst_health_ms = 0.0
        self.health_failures = 0
        self.rss_peak = self.rss_start = self.proc.memory_info().rss
        self._stop = threading.Event()

    def __enter__(self) -> Watch:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        with httpx.Client(base_url=self.server.base, timeout=30.0) as client:
            while not self._stop.is_set():
                start = time.perf_counter()
                try:
                    ok = client.get("/healthz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.worst_health_ms = max(self.worst_health_ms, (time.perf_counter() - start) * 1e3)
                self.health_failures += not ok
                self.rss_peak = max(self.rss_peak, self.proc.memory_info().rss)
                time.sleep(0.02)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.rss_end = self.proc.memory_info().rss

    def row(self) -> dict:
        mb = 1 << 20
        return {
            "healthz_worst_ms": round(self.worst_health_ms, 1),
            "healthz_failures": self.health_failures,
            "rss_start_mb": round(self.rss_start / mb, 1),
            "rss_peak_mb": round(self.rss_peak / mb, 1),
            "rss_end_mb": round(self.rss_end / mb, 1),
        }


def _address(i: int) -> str:
    return f"127.0.{10 + i // 250}.{1 + i % 250}"


def _connect(server: Server, address: str, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((address, 0))
    sock.connect(("127.0.0.1", server.port))
    return sock


def head_phase(server: Server, megabytes: int) -> dict:
    chunk = b"a" * (1 << 20)
    with Watch(server) as watch, _connect(server, "127.0.9.1") as sock:
        start = time.perf_counter()
        sent = 0
        try:
            sock.sendall(b"GET /v1/trie HTTP/1.1\r\nHost: x\r\nIf-None-Match: ")
            for _ in range(megabytes):
                sock.sendall(chunk)
                sent += len(chunk)
            sock.sendall(b"\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        sock.settimeout(60)
        try:
            reply = sock.recv(200)
        except ConnectionResetError:
            reply = b""
        seconds = time.perf_counter() - start
        time.sleep(0.5)  # a few /healthz and RSS samples after the refusal
    status = reply.split(b" ")[1].decode() if reply.startswith(b"HTTP/") else "none"
    return {
        "phase": f"{megabytes} MB If-None-Match",
        "status": status,
        "header_mb_sent": round(sent / (1 << 20), 1),
        "seconds": round(seconds, 3),
        **watch.row(),
    }


def _held(server: Server, addresses: set[str]) -> int:
    conns = psutil.Process(server.proc.pid).net_connections(kind="tcp")
    return sum(1 for c in conns if c.raddr and c.raddr.ip in addresses and c.status == psutil.CONN_ESTABLISHED)


def slow_reader_phase(server: Server, readers: int, limit_s: float) -> dict:
    addresses = {_address(i) for i in range(readers)}
    socks = []
    with Watch(server) as watch:
        start = time.perf_counter()
        for i in range(readers):
            sock = _connect(server, _address(i), rcvbuf=4096)
            sock.sendall(b"GET /v1/trie HTTP/1.1\r\nHost: x\r\n\r\n" * 4)
            socks.append(sock)
        time.sleep(1.0)  # until the server has accepted them all
        most = held = _held(server, addresses)
        while held and time.perf_counter() - start < limit_s:
            time.sleep(0.1)
            held = _held(server, addresses)
            most = max(most, held)
        seconds = time.perf_counter() - start
    for sock in socks:
        sock.close()
    return {
        "phase": f"{readers} slow readers, 4 pipelined GET /v1/trie each",
        "held_most": most,
        "held_at_end": held,
        "seconds_until_none_held": round(seconds, 2) if not held else f"> {limit_s}",
        **watch.row(),
    }


def disconnect_phase(server: Server, clients: int) -> dict:
    before = len(server.log_path.read_text(errors="replace").splitlines())
    head = b"POST /v1/encode HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 4000\r\n\r\n"
    with Watch(server) as watch:
        for i in range(clients):
            with _connect(server, _address(i)) as sock:
                sock.sendall(head + b'{"embeddings": [[0.1, ')
                time.sleep(0.02)
                if i % 2:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        time.sleep(1.0)
    lines = server.log_path.read_text(errors="replace").splitlines()[before:]
    return {
        "phase": f"{clients} clients leaving mid-body (POST /v1/encode)",
        "log_lines": len(lines),
        "tracebacks": sum("Traceback" in line for line in lines),
        **watch.row(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, type=Path)
    parser.add_argument("--readers", type=int, default=150)
    parser.add_argument("--header-mb", type=int, default=100)
    parser.add_argument("--send-timeout", type=float, default=5.0)
    args = parser.parse_args()

    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"transport_bounds_{os.getpid()}.log"
    server = Server(args.index, log, threads=1)
    server.cmd[server.cmd.index("--log-level") + 1] = "info"
    server.env["SEMID_SEND_TIMEOUT"] = str(args.send_timeout)
    server.start()
    try:
        with httpx.Client(base_url=server.base) as client:
            trie_bytes = len(client.get("/v1/trie").content)
        rows = [
            head_phase(server, args.header_mb),
            slow_reader_phase(server, args.readers, limit_s=args.send_timeout + 60),
            disconnect_phase(server, args.readers),
        ]
    finally:
        server.stop()
    load = os.getloadavg()
    data = {
        "index": str(args.index),
        "trie_bytes": trie_bytes,
        "send_timeout_s": args.send_timeout,
        "load_average": load,
        "phases": rows,
    }
    columns = [
        "phase",
        "status",
        "header_mb_sent",
        "seconds",
        "held_most",
        "seconds_until_none_held",
        "log_lines",
        "tracebacks",
        "healthz_worst_ms",
        "healthz_failures",
        "rss_start_mb",
        "rss_peak_mb",
        "rss_end_mb",
    ]
    md = (
        f"Index {args.index} (trie {trie_bytes} bytes); SEMID_SEND_TIMEOUT={args.send_timeout:g}, other settings "
        f"at their defaults; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}.\n\n"
        + markdown_table(rows, columns)
    )
    print(md)
    write_results("transport_bounds", data, md)


if __name__ == "__main__":
    main()
