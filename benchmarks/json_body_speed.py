"""JSON bodies of `POST /v1/encode`: pydantic's parser (before) vs the msgspec fast path (after), in one run.

    python benchmarks/json_body_speed.py                   # 1,024 x 384 bodies, 30 repetitions per phase
    python benchmarks/json_body_speed.py --repeat 5        # a quick smoke run

Set-up (not timed): a default-architecture RQ-VAE trained briefly on 5,000 seeded clustered
embeddings (benchmarks.assign_speed.quick_checkpoint) and an index of those items. The body is a
seeded 1,024 x 384 float32 batch serialised once with json.dumps (8 MB, 17 significant digits).

Phases, alternating before/after so load on the shared machine hits both alike (median and best of
--repeat each):

* parse: the body -> float32 matrix step of the server: ``parse_json(EncodeRequest)`` (pydantic's
  JSON parser, the path before) or ``parse_encode_json`` (msgspec, the path after), then the
  list -> NumPy conversion. Both include the JSON amplification bound (``check_json_size``).
* route: the whole `POST /v1/encode` through FastAPI in-process (Starlette's TestClient, no socket):
  body decoding in the worker thread, encoding, response validation and rendering. "before" swaps
  ``bodies.parse_encode_json`` for the pydantic path for that phase only.

items/s = 1,024 / the median seconds. The bar of issue 12 (>= 20,000 items/s) is for a real server
on loopback (benchmarks/service_speed.py); the route phase has no socket, so it is an upper bound.
The machine is shared (2 cores): the load average is recorded and the timings are noisy.
Writes benchmarks/results/json_body_speed.{md,json} (or under SEMID_BENCH_RESULTS).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.assign_speed import clustered_chunks, quick_checkpoint, write_catalog_chunked  # noqa: E402
from benchmarks.common import markdown_table, write_results  # noqa: E402
from semid.service.api import bodies  # noqa: E402
from semid.service.api.schemas import EncodeRequest  # noqa: E402

BATCH = 1024
DIM = 384
INDEX_ITEMS = 5000


def pydantic_path(raw: bytes, max_values: int) -> EncodeRequest:
    return bodies.parse_json(EncodeRequest, raw, max_values)


PATHS: dict[str, Callable[[bytes, int], EncodeRequest]] = {
    "before (pydantic)": pydantic_path,
    "after (msgspec)": bodies.parse_encode_json,
}


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def build_service(workdir: Path):
    from fastapi.testclient import TestClient

    from semid.service.api.app import create_app
    from semid.service.api.settings import ServiceSettings
    from semid.service.assign import assign_catalog

    catalog = workdir / "catalog.parquet"
    train = write_catalog_chunked(catalog, INDEX_ITEMS, DIM, seed=0, keep_rows=INDEX_ITEMS)
    checkpoint = quick_checkpoint(train, workdir / "checkpoint")
    assign_catalog(checkpoint=checkpoint, catalog=catalog, index_dir=workdir / "index")
    return TestClient(create_app(ServiceSettings(index_dir=workdir / "index")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--name", default="json_body_speed")
    args = ap.parse_args()
    torch.set_num_threads(1)
    _, emb = next(clustered_chunks(BATCH, DIM, seed=7, chunk_rows=BATCH))
    raw = json.dumps({"embeddings": emb.tolist()}).encode()
    cap = BATCH * (DIM + 16) + 1024
    for name, parse in PATHS.items():  # both paths give the same matrix
        assert np.array_equal(np.asarray(parse(raw, cap).embeddings, dtype=np.float32), emb), name
    load_before = load_average()
    samples: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeat):
        for name, parse in PATHS.items():
            seconds = timed(lambda p=parse: np.asarray(p(raw, cap).embeddings, dtype=np.float32))
            samples.setdefault(("parse", name), []).append(seconds)
    original = bodies.parse_encode_json
    with tempfile.TemporaryDirectory(prefix="semid-json-body-") as tmp, build_service(Path(tmp)) as client:
        headers = {"content-type": "application/json"}
        assert client.post("/v1/encode", content=raw, headers=headers).status_code == 200  # warm-up
        try:
            for _ in range(args.repeat):
                for name, parse in PATHS.items():
                    bodies.parse_encode_json = parse
                    response = None

                    def post() -> None:
                        nonlocal response
                        response = client.post("/v1/encode", content=raw, headers=headers)

                    samples.setdefault(("route", name), []).append(timed(post))
                    assert response is not None and response.status_code == 200, response
        finally:
            bodies.parse_encode_json = original
    load_after = load_average()
    rows = []
    for (phase, name), values in samples.items():
        median = statistics.median(values)
        rows.append(
            {
                "phase": phase,
                "path": name,
                "repeats": len(values),
                "median_ms": round(1000 * median, 2),
                "best_ms": round(1000 * min(values), 2),
                "items_per_s": round(BATCH / median),
            }
        )
    for phase in ("parse", "route"):
        before, after = (r for r in rows if r["phase"] == phase)
        after["speedup"] = round(before["median_ms"] / after["median_ms"], 2)
    data = {"body_bytes": len(raw), "load_before": load_before, "load_after": load_after, "rows": rows}
    markdown = "\n\n".join(
        [
            f"Body: {BATCH} x {DIM} float32 as JSON, {len(raw):,} bytes. Load average before: {load_before}; "
            f"after: {load_after} (2 cores shared with other engineers' runs: timings are noisy).",
            markdown_table(rows, ["phase", "path", "repeats", "median_ms", "best_ms", "items_per_s", "speedup"]),
            "parse: body -> float32 matrix (amplification bound, parser, list -> NumPy). route: the whole "
            "POST /v1/encode in-process (TestClient, no socket), 1 torch thread.",
        ]
    )
    path = write_results(args.name, data, markdown)
    print(path.read_text())  # noqa: T201


if __name__ == "__main__":
    main()
