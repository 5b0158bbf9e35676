"""JSON bodies of `POST /v1/encode`: the parsers side by side, the anchors' search before and after, the
request's steps one by one, the whole route in-process, and a real server with one and two clients.

    python benchmarks/json_body_speed.py                   # 1,024 x 384 bodies, 30 repetitions per phase
    python benchmarks/json_body_speed.py --repeat 5        # a quick smoke run

Set-up (not timed): a default-architecture RQ-VAE trained briefly on 5,000 seeded clustered
embeddings (benchmarks.assign_speed.quick_checkpoint; the 5,000 items are its first-level anchors, as
every catalog of at most 16,384 items keeps by default) and an index of those items; for the server
phase also the same training without anchors (what a larger catalog gets: new items take the nearest
centroid, ~6x cheaper to encode). Two seeded 1,024 x 384 float32 batches, each serialised once with json.dumps
(~8.6 MB, up to 17 significant digits per number):

* *unrelated*: clustered rows with other category centres than the index's (seed 7): to the anchors they
  are unrelated vectors (the body this benchmark always sent);
* *like the index*: new items drawn like the index's own (seed 0, a chunk the catalog does not hold), as
  real new items are. The anchors' bf16 pre-filter (semid.model.first_level.anchor_search) settles most rows of both.

Phases, the variants alternating within each repetition so load on the shared machine hits them alike
(median and best of --repeat each):

* bound: the amplification bound before parsing (``limits.check_json_size``), as it was (three
  ``bytes.count``) and as it is (NumPy compares).
* parse: the body -> float32 matrix step of the server, each with the bound: pydantic
  (``parse_json(EncodeRequest)``), msgspec (the shipped path before simdjson), simdjson straight to a
  float32 matrix (``bodies.parse_encode_json``: shipped, see ``semid.service.api.json_matrix``) and a
  candidate that makes no Python float at all (not shipped; see ``arrow_candidate``: msgspec checks the
  syntax and hands the embeddings over as raw bytes, NumPy checks the brackets and commas, Arrow's CSV
  reader converts the numbers).
* route: the whole `POST /v1/encode` through FastAPI in-process (Starlette's TestClient, no socket):
  ``bodies.parse_encode_json`` swapped for each parser in turn (unrelated body), then the shipped parser
  with the anchors' float32 search of every row (before) and the bf16 pre-filter (shipped), both bodies.
* stages: the route's steps one by one in-process (bound, msgspec decode, list -> NumPy, the whole body
  decode, the anchors' vote and encode_items with either search, the response's dicts + validation + JSON).
* server: a real ``semid serve`` on 127.0.0.1 (a subprocess; --workers-threads 1, then 2), with the
  simdjson path switched off in the server process (before: msgspec) and as shipped; per body one
  keep-alive httpx client sending the pre-serialised body --repeat times after a warm-up, then two such
  clients at once (items/s: both clients' items over the wall time); with the 5,000-anchor checkpoint,
  then the one without anchors.

items/s = 1,024 / the median seconds (one client). The bar of issue 12 (>= 20,000 items/s) is for the
real server. The machine is shared (2 cores): the load average is recorded and the timings are noisy.
Writes benchmarks/results/json_body_speed.{md,json} (or under SEMID_BENCH_RESULTS).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
from semid.model.first_level.anchor_search import Bf16Prefilter  # noqa: E402
from semid.service.api import bodies  # noqa: E402
from semid.service.api.json_matrix import read_encode_body  # noqa: E402
from semid.service.api.limits import check_json_size  # noqa: E402
from semid.service.api.schemas import EncodeRequest  # noqa: E402

BATCH = 1024
DIM = 384
INDEX_ITEMS = 5000
ANCHORS = "5,000 anchors"
NO_ANCHORS = "no anchors"
UNRELATED = "unrelated (seed 7)"
LIKE_INDEX = "like the index (seed 0, new)"


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


def msgspec_path(raw: bytes, max_values: int) -> EncodeRequest:
    """The shipped path as it was before simdjson: msgspec, then pydantic for whatever it refuses."""
    check_json_size(raw, max_values=max_values)
    try:
        fast = bodies._ENCODE_JSON.decode(raw)
        head = EncodeRequest.model_validate({"embeddings": [], "item_ids": fast.item_ids, "register": fast.register})
    except (msgspec.DecodeError, UnicodeDecodeError, ValidationError):
        return bodies.parse_json(EncodeRequest, raw, max_values)
    return EncodeRequest.model_construct(
        embeddings=fast.embeddings, item_ids=head.item_ids, register_items=head.register_items
    )


PATHS: dict[str, Callable[[bytes, int], EncodeRequest]] = {
    "pydantic": pydantic_path,
    "msgspec (before)": msgspec_path,
    "simdjson straight to float32 (shipped)": bodies.parse_encode_json,
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


def make_bodies() -> dict[str, np.ndarray]:
    """The two 1,024 x 384 batches sent (both unit-length rows; see the module docstring)."""
    _, unrelated = next(clustered_chunks(BATCH, DIM, seed=7, chunk_rows=BATCH))
    *_, (_, like_index) = clustered_chunks(2 * BATCH, DIM, seed=0, chunk_rows=BATCH)  # chunk 1: not in the catalog
    return {UNRELATED: unrelated, LIKE_INDEX: like_index}


def build_index(workdir: Path, *, anchors: bool = True) -> Path:
    """An index of the 5,000 seeded items, its checkpoint keeping them as first-level anchors (the default for
    a catalog of at most 16,384 items) or keeping none (the default for a larger one)."""
    from semid.service.assign import assign_catalog

    name = "anchors" if anchors else "plain"
    catalog = workdir / "catalog.parquet"
    train = write_catalog_chunked(catalog, INDEX_ITEMS, DIM, seed=0, keep_rows=INDEX_ITEMS)
    checkpoint = quick_checkpoint(train, workdir / f"checkpoint-{name}", anchors=anchors)
    assign_catalog(checkpoint=checkpoint, catalog=catalog, index_dir=workdir / f"index-{name}")
    return workdir / f"index-{name}"


def in_process_client(index_dir: Path):
    from fastapi.testclient import TestClient

    from semid.service.api.app import create_app
    from semid.service.api.settings import ServiceSettings

    return TestClient(create_app(ServiceSettings(index_dir=index_dir)))


@contextmanager
def anchors_search(prefilter: bool, policy: str) -> Iterator[None]:
    """The anchors' vote with the float32 search of every row (before), the bf16 pre-filter on every large
    call, or the shipped choice (the quicker of the two, as timed on its own calls)."""
    saved = Bf16Prefilter.enabled, Bf16Prefilter.policy
    Bf16Prefilter.enabled = prefilter and saved[0]
    Bf16Prefilter.policy = policy
    try:
        yield
    finally:
        Bf16Prefilter.enabled, Bf16Prefilter.policy = saved


SEARCHES = {
    "float32 search (before)": (False, "timed"),
    "bf16 pre-filter always": (True, "always"),
    "shipped: the quicker, timed": (True, "timed"),
}


def stage_rows(index_dir: Path, raws: dict[str, bytes], repeat: int) -> list[dict]:
    """The request's steps one by one, in-process, as the server runs them (1 torch thread)."""
    from pydantic import TypeAdapter

    from semid.service.api.limits import json_value_cap
    from semid.service.api.schemas import EncodeResponse
    from semid.service.api.settings import ServiceSettings
    from semid.service.api.state import ServiceState
    from semid.service.placement import encode_items

    state = ServiceState.load(ServiceSettings(index_dir=index_dir))
    cap = json_value_cap(state)
    tok = state.encoder.tokenizer
    codebook = tok.quantizer.codebooks[0]
    response = TypeAdapter(EncodeResponse)  # FastAPI 0.1xx: validate the returned dict, then pydantic's dump_json
    samples: dict[tuple[str, str], list[float]] = {}
    decided = {}
    timed_costs: dict[str, dict] = {}  # the shipped choice's own averages, us per row
    for label, raw in raws.items():
        x = bodies.decode_encode_body(state, raw, False, False).embeddings
        target = tok.normalizer(torch.from_numpy(x))
        out = encode_items(state.index, state.encoder, x)
        token = state.index.layout.token

        def respond(out=out, token=token) -> bytes:  # the route's result dicts, then what FastAPI does with them
            results = [
                {"base_code": b, "semantic_id": s, "token": token(s) if s else None, "item_id": None, "existing": e}
                for b, s, e in zip(out.base_codes.tolist(), out.semantic_ids, out.existing, strict=True)
            ]
            return response.dump_json(response.validate_python({"results": results, "segment": out.segment}))

        steps: dict[str, Callable[[], object]] = {
            "bound (check_json_size)": lambda raw=raw: check_json_size(raw, max_values=cap),
            "simdjson read_encode_body (body -> float32 matrix)": lambda raw=raw: read_encode_body(
                raw, raw.count(b"[")
            ),
            "msgspec decode (before)": lambda raw=raw: bodies._ENCODE_JSON.decode(raw),
            "rows -> float32 matrix (np.asarray, before)": lambda rows=bodies._ENCODE_JSON.decode(raw).embeddings: (
                bodies._as_matrix(rows, "embeddings")
            ),
            "decode_encode_body (bound + parse + matrix + checks)": lambda raw=raw: bodies.decode_encode_body(
                state, raw, False, False
            ),
            "response: result dicts + EncodeResponse validation + dump_json": respond,
        }
        for search, on in SEARCHES.items():
            steps[f"anchors' vote, {search}"] = lambda on=on, target=target: _with(
                on, tok.anchors.vote, target, codebook
            )
            steps[f"encode_items, {search}"] = lambda on=on, x=x: _with(on, encode_items, state.index, state.encoder, x)
        for _ in range(repeat):
            for name, fn in steps.items():
                samples.setdefault((label, name), []).append(timed(fn))
        prefilter = tok.anchors._prefilter
        prefilter.rows_decided = prefilter.rows_unsure = 0
        with anchors_search(True, "always"):
            tok.anchors.vote(target, codebook)
        decided[label] = round(prefilter.rows_decided / BATCH, 3)
        timed_costs[label] = {way: None if c is None else round(1e6 * c, 2) for way, c in prefilter.cost.items()}
    rows = []
    for (label, name), values in samples.items():
        rows.append({**summary("stages (in-process)", name, values), "body": label, "checkpoint": ANCHORS})
        if name.startswith("anchors' vote, bf16 pre-filter always"):
            anchors = tok.anchors
            rows[-1]["note"] = (
                f"pre-filter settled {decided[label]:.1%} of rows ({anchors.size:,} anchors, k {anchors.neighbours}, "
                f"rank_scale {getattr(anchors, 'rank_scale', 0.0)}); the shipped choice's own timings, us per row: "
                f"{timed_costs[label]}"
            )
    return rows


def plain_encode_rows(index_dir: Path, raws: dict[str, bytes], repeat: int) -> list[dict]:
    """encode_items with the checkpoint that keeps no anchors (1 torch thread), each body."""
    from semid.service.api.settings import ServiceSettings
    from semid.service.api.state import ServiceState
    from semid.service.placement import encode_items

    state = ServiceState.load(ServiceSettings(index_dir=index_dir))
    rows = []
    for label, raw in raws.items():
        x = bodies.decode_encode_body(state, raw, False, False).embeddings
        encode_items(state.index, state.encoder, x)  # warm-up
        values = [timed(lambda x=x: encode_items(state.index, state.encoder, x)) for _ in range(repeat)]
        rows.append({**summary("stages (in-process)", "encode_items", values), "body": label, "checkpoint": NO_ANCHORS})
    return rows


def _with(search: tuple[bool, str], fn: Callable, *args: object) -> object:
    with anchors_search(*search):
        return fn(*args)


# `semid serve` with the simdjson path switched off: what the server did before it
_SERVE_BEFORE = (
    "import semid.service.api.bodies as b; b.read_encode_body = lambda raw, brackets: None; "
    "from semid.service.cli import main; main()"
)


def server_rows(index_dir: Path, raws: dict[str, bytes], repeat: int, workdir: Path, checkpoint: str) -> list[dict]:
    """A real `semid serve` on loopback, before (msgspec) and shipped (simdjson): --workers-threads 1 then 2,
    each with one keep-alive client, then two concurrent ones (each its own connection), for each body."""
    from tests.servers import Server

    rows = []
    for threads, parser in [(t, p) for t in (1, 2) for p in ("msgspec (before)", "simdjson (shipped)")]:
        server = Server(index_dir, workdir / f"serve-{index_dir.name}-{threads}-{parser[:4]}.log", threads)
        if parser.startswith("msgspec"):
            server.cmd = [sys.executable, "-c", _SERVE_BEFORE, *server.cmd[server.cmd.index("serve") :]]
        server.start()
        try:
            for label, raw in raws.items():
                for clients in (1, 2):
                    seconds: list[list[float]] = [[] for _ in range(clients)]

                    barrier = threading.Barrier(clients + 1)
                    workers = [
                        threading.Thread(target=client_loop, args=(server.base, raw, repeat, barrier, seconds[i]))
                        for i in range(clients)
                    ]
                    for w in workers:
                        w.start()
                    barrier.wait(timeout=600)
                    load = load_average()
                    start = time.perf_counter()
                    for w in workers:
                        w.join()
                    wall = time.perf_counter() - start
                    assert all(len(s) == repeat for s in seconds), "a client failed (see above)"
                    path = f"{parser}, --workers-threads {threads}, {clients} client(s)"
                    row = summary("server (loopback)", path, [v for s in seconds for v in s])
                    row.update(body=label, load_average=load, checkpoint=checkpoint)
                    if clients > 1:  # throughput of the clients together: all their items over the wall time
                        row["items_per_s"] = round(clients * repeat * BATCH / wall)
                        row["note"] = "items_per_s: both clients' items / wall time; ms: per request"
                    rows.append(row)
        finally:
            server.stop()
    return rows


def client_loop(base: str, raw: bytes, repeat: int, barrier: threading.Barrier, seconds: list[float]) -> None:
    """One keep-alive client: a warm-up, then (once every client is warm) ``repeat`` timed posts."""
    import httpx

    headers = {"content-type": "application/json"}
    with httpx.Client(base_url=base, timeout=120.0) as client:
        for _ in range(2):
            assert client.post("/v1/encode", content=raw, headers=headers).status_code == 200
        barrier.wait(timeout=600)
        for _ in range(repeat):
            start = time.perf_counter()
            response = client.post("/v1/encode", content=raw, headers=headers)
            seconds.append(time.perf_counter() - start)
            assert response.status_code == 200, response.text[:300]


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
    embeddings = make_bodies()
    raws = {label: json.dumps({"embeddings": emb.tolist()}).encode() for label, emb in embeddings.items()}
    raw = raws[UNRELATED]
    cap = BATCH * (DIM + 16) + 1024
    for name, parse in PATHS.items():  # every path gives the same matrix
        assert np.array_equal(bodies._as_matrix(parse(raw, cap).embeddings, "embeddings"), embeddings[UNRELATED]), name
    load_before = load_average()
    samples: dict[tuple[str, str, str], list[float]] = {}
    for _ in range(args.repeat):
        for name, bound in BOUNDS.items():
            samples.setdefault(("bound", name, UNRELATED), []).append(timed(lambda b=bound: b(raw, cap)))
        for name, parse in PATHS.items():
            seconds = timed(lambda p=parse: bodies._as_matrix(p(raw, cap).embeddings, "embeddings"))
            samples.setdefault(("parse", name, UNRELATED), []).append(seconds)
    original = bodies.parse_encode_json
    with tempfile.TemporaryDirectory(prefix="semid-json-body-") as tmp:
        index_dir = build_index(Path(tmp))
        with in_process_client(index_dir) as client:
            headers = {"content-type": "application/json"}
            for body in raws.values():  # warm-up
                assert client.post("/v1/encode", content=body, headers=headers).status_code == 200
            response = None

            def post(body: bytes) -> None:
                nonlocal response
                response = client.post("/v1/encode", content=body, headers=headers)

            try:
                for _ in range(args.repeat):
                    for name, parse in PATHS.items():
                        bodies.parse_encode_json = parse
                        samples.setdefault(("route (in-process)", name, UNRELATED), []).append(timed(lambda: post(raw)))
                        assert response is not None and response.status_code == 200, response
                    bodies.parse_encode_json = original
                    for label, body in raws.items():
                        for search, on in SEARCHES.items():
                            with anchors_search(*on):
                                seconds = timed(lambda body=body: post(body))
                            key = ("route (in-process)", f"shipped parser, {search}", label)
                            samples.setdefault(key, []).append(seconds)
                            assert response is not None and response.status_code == 200, response
            finally:
                bodies.parse_encode_json = original
        rows = []
        for (phase, name, label), values in samples.items():
            rows.append({**summary(phase, name, values), "body": label, "checkpoint": ANCHORS})
        rows += stage_rows(index_dir, raws, args.repeat)
        load_mid = load_average()
        rows += server_rows(index_dir, raws, args.repeat, Path(tmp), ANCHORS)
        plain_index = build_index(Path(tmp), anchors=False)
        rows += plain_encode_rows(plain_index, raws, args.repeat)
        rows += server_rows(plain_index, raws, args.repeat, Path(tmp), NO_ANCHORS)
    load_after = load_average()
    for phase in ("bound", "parse"):
        first, *others = (r for r in rows if r["phase"] == phase)
        for row in others:
            row["speedup"] = round(first["median_ms"] / row["median_ms"], 2)
    data = {
        "body_bytes": {label: len(body) for label, body in raws.items()},
        "prefilter_enabled": Bf16Prefilter.enabled,
        "load_before": load_before,
        "load_after_in_process": load_mid,
        "load_after": load_after,
        "rows": rows,
    }
    sizes = ", ".join(f"{label}: {len(body):,} bytes" for label, body in raws.items())
    markdown = "\n\n".join(
        [
            f"Bodies: {BATCH} x {DIM} float32 as JSON ({sizes}). bf16 pre-filter enabled on this CPU: "
            f"{Bf16Prefilter.enabled}. Load average before: {load_before}; after the in-process phases: "
            f"{load_mid}; at the end: {load_after} (2 cores shared with other engineers' runs: timings are noisy).",
            markdown_table(
                rows,
                [
                    "phase",
                    "checkpoint",
                    "body",
                    "path",
                    "repeats",
                    "median_ms",
                    "best_ms",
                    "p99_ms",
                    "items_per_s",
                    "speedup",
                    "note",
                ],
            ),
            "Bodies: *unrelated* = the seeded clustered batch this benchmark always sent (seed 7: other category "
            "centres than the index's, so to the anchors they are unrelated vectors); *like the index* = new items "
            "drawn like the index's own (seed 0, a chunk the catalog does not hold), as real new items are. "
            "bound: the amplification bound alone. parse: body -> float32 matrix (bound, parser, list -> NumPy). "
            "route: the whole POST /v1/encode in-process (TestClient, no socket), 1 torch thread, the index's "
            "checkpoint keeps its 5,000 training items as first-level anchors; the parsers on the unrelated body, "
            "then the shipped parser with the anchors' float32 search of every row (before), the bf16 pre-filter "
            "on every call (always) and the shipped choice (the quicker of the two as timed on its own calls; same "
            "codes either way), both bodies. stages: the route's steps one by one in-process (1 torch thread). "
            "server: `semid serve` on 127.0.0.1, the anchors' timed choice, JSON parsed by msgspec (before: the "
            "simdjson path switched off in the server process) or simdjson (shipped), "
            "keep-alive clients, bodies serialised before timing; with 2 clients items_per_s counts both clients' "
            "items over the wall time. speedup: the first row of the phase / this row.",
        ]
    )
    path = write_results(args.name, data, markdown)
    print(path.read_text())  # noqa: T201


if __name__ == "__main__":
    main()
