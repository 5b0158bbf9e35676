"""What a hostile JSON body costs a real `semid serve`, before and after the body-structure bounds (issue 22, 1-2).

    git archive a52d819 service | (mkdir -p /tmp/old && tar -x -C /tmp/old)     # the code before, once
    python benchmarks/hostile_bodies.py --before /tmp/old                     # both, side by side
    python benchmarks/hostile_bodies.py                                       # this tree only

``--before DIR``: a directory holding an older checkout's ``service/`` package. Its server runs from this venv
with ``PYTHONPATH`` pointing at a temporary ``semid`` namespace made of that ``service/`` and this tree's
``model/`` (``semid`` is a namespace package, so the path entry wins over the editable install).

Set-up (not measured): the MovieLens catalog (384-d, ``../shared/data``; a seeded synthetic 384-d catalog of the
same size when it is absent), a default-architecture RQ-VAE trained for 4 epochs
(``assign_speed.quick_checkpoint``), ``assign_catalog`` keeping ``title``. Each server runs with its defaults
(``max_batch`` 8,192: the JSON value bound is 8,192 x (384 + 64) + 1,024 values) and an API key. Each case gets a
fresh server over a fresh copy of the index, warmed up (one legal request and one small refused body per route),
and is sent once and measured:

- ``s``: seconds from sending the body to the response (client side, loopback);
- ``healthz_max_ms``: the slowest of the ``/healthz`` requests another thread sent every 10 ms meanwhile
  (the event loop's stall);
- ``peak_mb``: the server's RSS high-water mark during the request above its RSS before it (``VmHWM`` after
  resetting it through ``/proc/<pid>/clear_refs``);
- ``kept_mb``: RSS 0.5 s after the response minus RSS before the request.

The last two rows are the largest legal batch of each route (8,192 x 384), the yardstick a refused body's
cost is held to; the two before them are that batch with its very last value a string (refused only at the
end). Writes benchmarks/results/hostile_bodies.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.assign_speed import quick_checkpoint  # noqa: E402
from benchmarks.common import MOVIELENS, markdown_table, write_results  # noqa: E402
from tests.servers import Server  # noqa: E402

API_KEY = "bench-key"
DIM = 384
ROOT = Path(__file__).resolve().parents[1]


def _items(n: int) -> bytes:
    return b"[" + b"{}," * (n - 1) + b"{}]"


def _keys(n: int) -> bytes:
    return b",".join(b'"k%d":0' % i for i in range(n))


def _row(rng: np.random.Generator) -> list[float]:
    return [round(float(v), 6) for v in rng.standard_normal(DIM)]


def cases(rng: np.random.Generator) -> list[tuple[str, str, bytes, int | None]]:
    """(name, path, body, expected status or None for a legal request)."""
    legal_rows = np.round(rng.standard_normal((8192, DIM)), 6).tolist()
    objects_row = b"[" + b",".join([b"{}"] * DIM) + b"]"
    row = json.dumps(_row(rng)).encode()
    return [
        ("resolve: 700,000 []", "/v1/resolve", b'{"semantic_id":[' + b"[]," * 700_000 + b'[]],"k":1}', 413),
        ("encode: 1,050,000 {}", "/v1/encode", b'{"embeddings":' + _items(1_050_000) + b"}", 413),
        ("encode: 1,750,000 {}", "/v1/encode", b'{"embeddings":' + _items(1_750_000) + b"}", 413),
        (
            "encode: 4,700 rows of 384 {}",
            "/v1/encode",
            b'{"embeddings":[' + b",".join([objects_row] * 4700) + b"]}",
            422,
        ),
        ("encode: 1M unknown keys", "/v1/encode", b'{"embeddings":[' + row + b"]," + _keys(1_000_000) + b"}", 422),
        ("assign: 1,750,000 {}", "/v1/assign", b'{"items":' + _items(1_750_000) + b"}", 413),
        (
            "assign: one item of 1M keys",
            "/v1/assign",
            b'{"items":[{"item_id":-1,"embedding":' + row + b"," + _keys(1_000_000) + b"}]}",
            422,
        ),
        (
            "encode: 8,192 x 384, the last value a string",
            "/v1/encode",
            json.dumps({"embeddings": legal_rows[:-1] + [legal_rows[-1][:-1] + ["x"]]}).encode(),
            422,
        ),
        (
            "assign: 8,192 x 384, the last value a string",
            "/v1/assign",
            json.dumps(
                {
                    "items": [
                        {"item_id": 10_000_000 + i, "embedding": r if i < 8191 else r[:-1] + ["x"]}
                        for i, r in enumerate(legal_rows)
                    ]
                }
            ).encode(),
            422,
        ),
        ("legal encode: 8,192 x 384", "/v1/encode", json.dumps({"embeddings": legal_rows}).encode(), None),
        (
            "legal assign: 8,192 x 384",
            "/v1/assign",
            json.dumps(
                {
                    "items": [
                        {"item_id": 10_000_000 + i, "embedding": r, "title": f"bench {i}"}
                        for i, r in enumerate(legal_rows)
                    ]
                }
            ).encode(),
            None,
        ),
    ]


class Probe:
    """/healthz every 10 ms from another thread, while a request runs."""

    def __init__(self, base: str) -> None:
        self.base, self.latencies = base, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=600.0) as c:
            while not self.stop.is_set():
                start = time.perf_counter()
                c.get("/healthz")
                self.latencies.append(time.perf_counter() - start)
                time.sleep(0.01)


def _rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def _reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak(pid: int) -> int | None:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def measure(server: Server, name: str, path: str, body: bytes, expected: int | None) -> dict:
    pid = server.proc.pid
    headers = {"content-type": "application/json", "X-API-Key": API_KEY}
    time.sleep(0.3)
    before = _rss(pid)
    peak_ok = _reset_peak(pid)
    probe = Probe(server.base)
    probe.thread.start()
    time.sleep(0.05)
    start = time.perf_counter()
    with httpx.Client(base_url=server.base, timeout=600.0) as c:
        response = c.post(path, content=body, headers=headers)
    seconds = time.perf_counter() - start
    probe.stop.set()
    probe.thread.join()
    peak = _peak(pid) if peak_ok else None
    time.sleep(0.5)
    error = response.json().get("error", {}) if response.status_code >= 400 else {}
    return {
        "case": name,
        "bytes": len(body),
        "status": response.status_code,
        "expected": expected or 200,
        "field": error.get("field"),
        "message": (error.get("message") or "")[:120],
        "s": seconds,
        "healthz_max_ms": 1000 * max(probe.latencies),
        "healthz_polls": len(probe.latencies),
        "peak_mb": None if peak is None else (peak - before) / 2**20,
        "kept_mb": (_rss(pid) - before) / 2**20,
    }


def start_server(index: Path, workdir: Path, label: str, before_code: Path | None) -> Server:
    server = Server(index, workdir / f"server-{label}.log", threads=1)
    server.env.update(SEMID_API_KEY=API_KEY)
    if before_code is not None:
        shim = workdir / "before-pkg" / "semid"
        shim.mkdir(parents=True, exist_ok=True)
        for part, target in (("service", before_code / "service"), ("model", ROOT / "model")):
            if not (shim / part).exists():
                (shim / part).symlink_to(target.resolve())
        server.env["PYTHONPATH"] = str(shim.parent)
        server.cmd = [sys.executable, "-m", "semid.service.cli", *server.cmd[server.cmd.index("serve") :]]
    server.start()
    with httpx.Client(base_url=server.base, timeout=120.0) as c:  # warm-up: every route, legal and refused
        c.post("/v1/encode", json={"embeddings": [[0.5] * DIM]})
        c.post("/v1/encode", content=b'{"embeddings":' + _items(100) + b"}")
        c.post("/v1/assign", content=b'{"items":' + _items(100) + b"}", headers={"X-API-Key": API_KEY})
        c.post("/v1/resolve", json={"semantic_id": [0], "k": 2})
        c.post("/v1/resolve", json={"semantic_id": [[]], "k": 2})
    return server


def run_case(index: Path, workdir: Path, label: str, before_code: Path | None, case: tuple) -> dict:
    """One case on a fresh server over a fresh copy of the index (figures of one case never carry another's)."""
    import shutil

    copy = workdir / f"index-{label}"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(index, copy)
    server = start_server(copy, workdir, label, before_code)
    try:
        row = measure(server, *case)
        row["server_rss_mb"] = _rss(server.proc.pid) / 2**20
        return row
    finally:
        server.stop()


def build_index(workdir: Path) -> tuple[Path, str]:
    import pyarrow.parquet as pq

    from semid.model.data.catalog import read_catalog
    from semid.model.data.synthetic import synthetic_catalog, write_catalog
    from semid.service.assign import assign_catalog

    if MOVIELENS.is_file():
        catalog, source = MOVIELENS, "MovieLens (../shared/data/movielens-small/items.parquet)"
    else:
        catalog = write_catalog(synthetic_catalog(items=9742, dim=DIM, seed=0), workdir / "synthetic.parquet")
        source = "synthetic, 9,742 x 384 (seed 0): MovieLens absent"
    assert "title" in pq.read_schema(catalog).names
    checkpoint = quick_checkpoint(read_catalog(catalog).embeddings, workdir / "ckpt")
    index = workdir / "index"
    assign_catalog(checkpoint=checkpoint, catalog=catalog, index_dir=index, keep_columns=["title"])
    return index, source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, default=None, help="an older checkout holding service/ (see above)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    load_start = os.getloadavg()
    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="hostile-bodies-") as tmp:
        workdir = Path(tmp)
        index, source = build_index(workdir)
        bodies = cases(np.random.default_rng(args.seed))
        labels = {"before": args.before, "after": None} if args.before is not None else {"after": None}
        runs = {label: {"rows": []} for label in labels}
        for case in bodies:
            for label, code in labels.items():
                runs[label]["rows"].append(run_case(index, workdir, label, code, case))
                print(label, json.dumps(runs[label]["rows"][-1]), flush=True)
    load_end = os.getloadavg()
    write(runs, source, args, load_start, load_end)


def write(runs: dict, source: str, args: argparse.Namespace, load_start: tuple, load_end: tuple) -> None:
    labels = list(runs)
    table = []
    for i, row in enumerate(runs[labels[-1]]["rows"]):
        line = {"case": row["case"], "MB": row["bytes"] / 2**20}
        for label in labels:
            r = runs[label]["rows"][i]
            line[f"{label} status"] = r["status"]
            line[f"{label} s"] = r["s"]
            line[f"{label} healthz max ms"] = r["healthz_max_ms"]
            line[f"{label} peak MB"] = r["peak_mb"]
            line[f"{label} kept MB"] = r["kept_mb"]
        table.append(line)
    columns = list(table[0])
    notes = [
        f"Index: {source}, 384-d, `title` kept; servers with their defaults (max_batch 8,192) and an API key.",
        f"Load average (1, 5, 15 min) at start {tuple(round(x, 2) for x in load_start)}, "
        f"at end {tuple(round(x, 2) for x in load_end)}, on a shared 2-core machine.",
        "before: " + (f"`service/` of {args.before}" if args.before else "not run") + "; after: this tree.",
        "s: seconds to the response; healthz max ms: slowest /healthz answered meanwhile (polled every 10 ms); "
        "peak MB: RSS high-water mark during the request minus RSS before it; kept MB: RSS 0.5 s after minus "
        "RSS before.",
        "Each case runs on a fresh server (warmed up: one legal and one small refused body per route) over a "
        "fresh copy of the index.",
    ]
    messages = "\n".join(
        f"- {r['case']}: {r['status']} `{r['field']}`: {r['message']}" for r in runs[labels[-1]]["rows"]
    )
    markdown = "\n\n".join(
        ["\n".join(f"- {n}" for n in notes), markdown_table(table, columns), "Errors (after):\n\n" + messages]
    )
    path = write_results(
        "hostile_bodies", {"source": source, "load_start": load_start, "load_end": load_end, "runs": runs}, markdown
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
