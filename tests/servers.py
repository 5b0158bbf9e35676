"""`semid serve` as a subprocess on a free loopback port: the server the HTTP tests and the HTTP benchmarks drive.

It lives with the tests (they need a real server: transport limits, hostile bodies, the browser test) and the
benchmarks import it from here, so both start the server the same way. It imports nothing of pytest.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

HOST = "127.0.0.1"
READY_TIMEOUT_S = 180.0


def semid_command() -> list[str]:
    """The venv's `semid` console script next to this interpreter, else `python -m semid.service.cli`."""
    exe = Path(sys.executable).parent / "semid"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "semid.service.cli"]


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (Linux /proc), None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    """`semid serve` as a subprocess on a free loopback port.

    ``env`` starts as this process's environment without any ``SEMID_*`` setting; set the server's own in it
    before :meth:`start`."""

    def __init__(self, index_dir: Path, log_path: Path, threads: int) -> None:
        self.port = free_port()
        self.base = f"http://{HOST}:{self.port}"
        self.cmd = [*semid_command(), "serve", "--index", str(index_dir), "--host", HOST, "--port", str(self.port)]
        self.cmd += ["--log-level", "warning"]
        if threads:
            self.cmd += ["--workers-threads", str(threads)]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SEMID_")}
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> float:
        """Start and wait for /readyz; returns the seconds until ready."""
        start = time.perf_counter()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        deadline = start + READY_TIMEOUT_S
        with httpx.Client(base_url=self.base, timeout=2.0) as client:
            while time.perf_counter() < deadline:
                if self.proc.poll() is not None:
                    raise SystemExit(f"semid serve exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    if client.get("/readyz").status_code == 200:
                        return time.perf_counter() - start
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        raise SystemExit(f"semid serve was not ready within {READY_TIMEOUT_S:g} s:\n{self.log_tail()}")

    def cpu(self) -> float | None:
        return proc_cpu_seconds(self.proc.pid) if self.proc else None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
