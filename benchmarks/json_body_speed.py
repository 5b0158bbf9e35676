"""JSON bodies of `POST /v1/encode`: the parsers side by side, the whole route in-process, and a real server.

    python benchmarks/json_body_speed.py                   # 1,024 x 384 bodies, 30 repetitions per phase
    python benchmarks/json_body_speed.py --repeat 5        # a quick smoke run

Set-up (not timed): a default-architecture RQ-VAE trained briefly on 5,000 seeded clustered
embeddings (benchmarks.assign_speed.quick_checkpoint; the 5,000 items are its first-level anchors) and an
index of those items. The body is a seeded 1,024 x 384 float32 batch serialised once with json.dumps
(8.6 MB, up to 17 significant digits per number).

Phases, the paths alternating within each repetition so load on the shared machine hits them alike
(median and best of --repeat each):

* bound: the amplification bound before parsing (``limits.check_json_size``), as it was (three
  ``bytes.count``) and as it is (NumPy compares).
* parse: the body -> float32 matrix step of the server, each with the bound: pydantic
  (``parse_json(EncodeRequest)``), msgspec (``bodies.parse_encode_json``: the shipped path) and a
  candidate that makes no Python float at all (not shipped; see ``arrow_candidate``: msgspec checks the
  syntax and hands the embeddings over as raw bytes, NumPy checks the brackets and commas, Arrow's CSV
  reader converts the numbers).
* route: the whole `POST /v1/encode` through FastAPI in-process (Starlette's TestClient, no socket),
  ``bodies.parse_encode_json`` swapped for each path in turn: decoding in the worker thread, encoding
  (with the anchors' vote), response validation and rendering.
* server: the shipped path in a real ``semid serve`` on 127.0.0.1 (a subprocess; --workers-threads 1,
  then 2), one keep-alive httpx client sending the pre-serialised body --repeat times after a warm-up.

items/s = 1,024 / the median seconds. The bar of issue 12 (>= 20,000 items/s) is for the real server.
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

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import torch
from pydantic import ValidationError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.assign_speed import clustered_chunks, quick_checkpoint, write_catalog_chunked  # noqa: E402
from benchmarks.common import markdown_table, write_results  # noqa: E402
from semid.service.api import bodies  # noqa: E402
from semid.service.api.limits import check_json_size  # noqa: E402
from semid.service.api.schemas import EncodeRequest  # noqa: E402

BATCH = 1024
DIM = 384
INDEX_ITEMS = 5000


# --- the candidate without Python floats (measured, not shipped) ------------------------------------------------


class _RawEncodeJson(msgspec.Struct, forbid_unknown_fields=True):
    embeddings: msgspec.Raw
    item_ids: list[int | str] | None = None
    register: bool = False


_RAW_DECODER = msgspec.json.Decoder(_RawEncodeJson)
_ONE_PER_LINE = bytes.maketrans(b"[], \t\r\n", b"\n" * 7)


def _raw_matrix(span: bytes) -> np.ndarray | None:
    """float64 [rows, width] of a syntactically valid JSON value of number rows, or None (then pydantic)."""
    if any(token in span for token in (b'"', b"{", b"t", b"f", b"n")):
        return None
    chars = np.frombuffer(span, dtype=np.uint8)
    opens, closes = np.flatnonzero(chars == ord("[")), np.flatnonzero(chars == ord("]"))
    rows = len(opens) - 1
    if rows < 1 or len(closes) != len(opens) or opens[0] != 0 or closes[-1] != len(chars) - 1:
        return None
    if not (np.all(opens[1:] < closes[:-1]) and np.all(closes[:-2] < opens[2:])):  # depth 1 or 2 only
        return None
    commas = np.flatnonzero(chars == ord(","))
    per_row = np.searchsorted(commas, closes[:-1]) - np.searchsorted(commas, opens[1:])
    if len(commas) - int(per_row.sum()) != rows - 1 or np.any(per_row != per_row[0]):
        return None
    lines = span.translate(_ONE_PER_LINE)
    try:
        table = pcsv.read_csv(
            pa.py_buffer(lines),
            read_options=pcsv.ReadOptions(column_names=["v"], use_threads=False, block_size=len(lines) + 1),
            parse_options=pcsv.ParseOptions(quote_char=False, escape_char=False, ignore_empty_lines=True),
            convert_options=pcsv.ConvertOptions(column_types={"v": pa.float64()}, null_values=[]),
        )
    except pa.ArrowInvalid:
        return None
    values = table.column("v").to_numpy()
    if len(values) != rows * (int(per_row[0]) + 1) or not np.isfinite(values).all():
        return None
    if np.signbit(values[values == 0]).any():  # pydantic reads the integer -0 as 0.0
        return None
    return values.reshape(rows, -1)


def arrow_candidate(raw: bytes, max_values: int) -> EncodeRequest:
    check_json_size(raw, max_values=max_values)
    try:
        fast = _RAW_DECODER.decode(raw)
        head = EncodeRequest.model_validate({"embeddings": [], "item_ids": fast.item_ids, "register": fast.register})
        matrix = _raw_matrix(bytes(fast.embeddings))
    except (msgspec.DecodeError, ValidationError, RecursionError):
        matrix = None
    if matrix is None:
        return bodies.parse_json(EncodeRequest, raw, max_values)
    return EncodeRequest.model_construct(embeddings=matrix, item_ids=head.item_ids, register_items=head.register_items)


# --- paths and phases --------------------------------------------------------------------------------------------


def pydantic_path(raw: bytes, max_values: int) -> EncodeRequest:
    return bodies.parse_json(EncodeRequest, raw, max_values)


PATHS: dict[str, Callable[[bytes, int], EncodeRequest]] = {
    "pydantic": pydantic_path,
    "msgspec (shipped)": bodies.parse_encode_json,
    "no Python floats: msgspec.Raw + NumPy + Arrow CSV (candidate, not shipped)": arrow_candidate,
}


def bound_before(raw: bytes, max_values: int) -> int:
    """check_json_size as it was: three bytes.count passes."""
    return raw.count(b",") + raw.count(b"[") + raw.count(b"{") + 1


BOUNDS: dict[str, Callable[[bytes, int], object]] = {
    "bound: 3 x bytes.count (before)": bound_before,
    "bound: NumPy compares (after)": lambda raw, cap: check_json_size(raw, max_values=cap),
}


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def build_index(workdir: Path) -> Path:
    from semid.service.assign import assign_catalog

    catalog = workdir / "catalog.parquet"
    train = write_catalog_chunked(catalog, INDEX_ITEMS, DIM, seed=0, keep_rows=INDEX_ITEMS)
    checkpoint = quick_checkpoint(train, workdir / "checkpoint")
    assign_catalog(checkpoint=checkpoint, catalog=catalog, index_dir=workdir / "index")
    return workdir / "index"


def in_process_client(index_dir: Path):
    from fastapi.testclient import TestClient

    from semid.service.api.app import create_app
    from semid.service.api.settings import ServiceSettings

    return TestClient(create_app(ServiceSettings(index_dir=index_dir)))


def server_rows(index_dir: Path, raw: bytes, repeat: int, workdir: Path) -> list[dict]:
    """The shipped path in a real `semid serve` on loopback, --workers-threads 1 then 2."""
    import httpx

    from benchmarks.service_speed import Server

    rows = []
    for threads in (1, 2):
        server = Server(index_dir, workdir / f"serve-{threads}.log", threads)
        server.start()
        try:
            with httpx.Client(base_url=server.base, timeout=120.0) as client:
                headers = {"content-type": "application/json"}
                for _ in range(2):  # warm-up
                    assert client.post("/v1/encode", content=raw, headers=headers).status_code == 200
                load = load_average()
                seconds = []
                for _ in range(repeat):
                    start = time.perf_counter()
                    response = client.post("/v1/encode", content=raw, headers=headers)
                    seconds.append(time.perf_counter() - start)
                    assert response.status_code == 200, response.text[:300]
        finally:
            server.stop()
        rows.append(summary("server (loopback)", f"msgspec (shipped), --workers-threads {threads}", seconds))
        rows[-1]["load_average"] = load
    return rows


def summary(phase: str, path: str, values: list[float]) -> dict:
    median = statistics.median(values)
    ordered = sorted(values)
    return {
        "phase": phase,
        "path": path,
        "repeats": len(values),
        "median_ms": round(1000 * median, 2),
        "best_ms": round(1000 * ordered[0], 2),
        "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2),
        "items_per_s": round(BATCH / median),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--name", default="json_body_speed")
    args = ap.parse_args()
    torch.set_num_threads(1)
    _, emb = next(clustered_chunks(BATCH, DIM, seed=7, chunk_rows=BATCH))
    raw = json.dumps({"embeddings": emb.tolist()}).encode()
    cap = BATCH * (DIM + 16) + 1024
    for name, parse in PATHS.items():  # every path gives the same matrix
        assert np.array_equal(bodies._as_matrix(parse(raw, cap).embeddings, "embeddings"), emb), name
    load_before = load_average()
    samples: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeat):
        for name, bound in BOUNDS.items():
            samples.setdefault(("bound", name), []).append(timed(lambda b=bound: b(raw, cap)))
        for name, parse in PATHS.items():
            seconds = timed(lambda p=parse: bodies._as_matrix(p(raw, cap).embeddings, "embeddings"))
            samples.setdefault(("parse", name), []).append(seconds)
    original = bodies.parse_encode_json
    with tempfile.TemporaryDirectory(prefix="semid-json-body-") as tmp:
        index_dir = build_index(Path(tmp))
        with in_process_client(index_dir) as client:
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

                        samples.setdefault(("route (in-process)", name), []).append(timed(post))
                        assert response is not None and response.status_code == 200, response
            finally:
                bodies.parse_encode_json = original
        load_mid = load_average()
        rows = [summary(phase, name, values) for (phase, name), values in samples.items()]
        rows += server_rows(index_dir, raw, args.repeat, Path(tmp))
    load_after = load_average()
    for phase in ("bound", "parse", "route (in-process)"):
        first, *others = (r for r in rows if r["phase"] == phase)
        for row in others:
            row["speedup"] = round(first["median_ms"] / row["median_ms"], 2)
    data = {
        "body_bytes": len(raw),
        "load_before": load_before,
        "load_after_in_process": load_mid,
        "load_after": load_after,
        "rows": rows,
    }
    markdown = "\n\n".join(
        [
            f"Body: {BATCH} x {DIM} float32 as JSON, {len(raw):,} bytes. Load average before: {load_before}; "
            f"after the in-process phases: {load_mid}; at the end: {load_after} (2 cores shared with other "
            "engineers' runs: timings are noisy).",
            markdown_table(
                rows, ["phase", "path", "repeats", "median_ms", "best_ms", "p99_ms", "items_per_s", "speedup"]
            ),
            "bound: the amplification bound alone. parse: body -> float32 matrix (bound, parser, list -> NumPy). "
            "route: the whole POST /v1/encode in-process (TestClient, no socket), 1 torch thread, the index's "
            "checkpoint keeps its 5,000 training items as first-level anchors. server: `semid serve` on "
            "127.0.0.1 with the shipped path, one keep-alive client, body serialised before timing. speedup: "
            "the first row of the phase / this row.",
        ]
    )
    path = write_results(args.name, data, markdown)
    print(path.read_text())  # noqa: T201


if __name__ == "__main__":
    main()
