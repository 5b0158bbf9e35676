"""Helpers shared by the benchmark scripts: machine facts and writing results."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

# SEMID_BENCH_RESULTS: write results elsewhere (smoke runs with tiny parameters must not overwrite the record)
RESULTS = Path(os.environ.get("SEMID_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MOVIELENS = SHARED_DATA / "movielens-small" / "items.parquet"


def machine() -> dict:
    import torch

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def command() -> str:
    return " ".join([Path(sys.executable).name, *sys.argv])


def write_results(name: str, data: dict, markdown: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"command": command(), "machine": machine(), **data}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    header = f"# {name}\n\nCommand: `{payload['command']}`\n\nMachine: {json.dumps(payload['machine'])}\n\n"
    path = RESULTS / f"{name}.md"
    path.write_text(header + markdown + "\n")
    return path


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
