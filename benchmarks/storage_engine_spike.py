"""Storage-engine spike (issue 24, item 4): today's index engine against a Lance dataset, side by side in one run.

    python benchmarks/storage_engine_spike.py                       # 1M items x 32-d, the recorded run
    python benchmarks/storage_engine_spike.py --items 20000 --appends 5 --lookups 50   # a quick smoke run

Needs `pip install 'semid[bench]'` (pylance) and `moto[server]` (dev extra) for the object-store part.

Both engines hold the same synthetic rows (not measured): int item ids 0..N-1, 3 x 256 codes plus the dedup
digit (the rank of the item in its base code's bucket), a kept column `category`, the embedding hash and a
--dim float32 vector. Today's engine is built as `semid assign` builds a large batch (`SemanticIdIndex.create`,
then one segment whose vectors are in a segment vector file); the Lance dataset by one `lance.write_dataset`,
with B-tree scalar indexes on `item_id` and `packed_id` (the semantic ID packed in one int64, as today's engine
sorts on) so its look-ups do not scan.

Local disk, per engine:

* open: a fresh read-only handle (today: `SemanticIdIndex.open`, which loads the arrays; Lance:
  `lance.dataset`, lazy), open + the first point look-up, and for Lance open + reading the columns a semid
  snapshot holds in memory (item id, packed ID, base code, fallback, hash, kept column);
* point look-up by item id and by semantic-ID prefix (2 codes, first page of 10 rows): median and p99 over
  --lookups random keys (today: `IndexSnapshot.get_item` / `prefix_rows` + `items`; Lance: a filtered
  `to_table` on the indexed column);
* append 4 new items, --appends times: latency, files created or replaced per append and their bytes (today:
  `SemanticIdIndex.append(persist_vectors=False)`, as `POST /v1/assign` writes; Lance: `write_dataset(mode=
  "append")`); then a reader's refresh to the newest version (today: `refresh_if_changed` on a second handle;
  Lance: `checkout_latest`);
* compaction: today's engine folds small writes into the tail segment inside each append (its cost is in the
  append latency; the segment count after the appends is reported); Lance: `optimize.compact_files()` after the
  appends (time, fragments before and after, files written).

Object storage: a `moto[server]` S3 server subprocess on loopback; requests are counted from its request log
(one line per HTTP request). Today's engine has no object-store backend in this branch, so the protocol of
issue 24 item 2 is replayed with boto3 over the same files: a cold reader GETs manifest.json and every listed
file into a local cache directory and opens it there; a writer PUTs each new file and then manifest.json with
`If-Match` (the conditional commit); a reader polls manifest.json with `If-None-Match` (304 when unchanged) and
GETs only files missing from its cache, then refreshes its handle on the cache. Lance runs against the same
server through its own object store (`s3://` URI, storage options pointing at the server).

Every phase records the 1-minute load average. Writes benchmarks/results/storage_engine_spike.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import markdown_table, write_results  # noqa: E402

LEVELS, CODEBOOK = 3, 256
KEEP = ("category",)
CHUNK = 65_536
BUCKET = "semid-spike"
CREDENTIALS = {"aws_access_key_id": "spike", "aws_secret_access_key": "spike", "region_name": "us-east-1"}
REQUEST_LINE = re.compile(r'"(GET|PUT|POST|HEAD|DELETE) (\S+) HTTP/[\d.]+" (\d{3})')


def loadavg() -> float:
    return round(os.getloadavg()[0], 2)


def layout():
    from semid.service.ids.layout import IdLayout

    return IdLayout.for_tokenizer(levels=LEVELS, codebook_size=CODEBOOK)


# --- the rows --------------------------------------------------------------------------------------------------


def synthetic(n: int, dim: int, *, first_id: int = 0, seed: int = 0, new_bucket: bool = False) -> dict:
    """``n`` rows with unique semantic IDs. ``new_bucket``: first code CODEBOOK-1 (never used by the base rows,
    whose first code is below it), the other codes counting up from ``first_id``, so appended rows never collide."""
    rng = np.random.default_rng(seed)
    ids = np.arange(first_id, first_id + n, dtype=np.int64)
    if new_bucket:
        k = ids - first_id + first_id * 7  # distinct per append (first_id distinct), within 256 x 256
        base = np.stack([np.full(n, CODEBOOK - 1), (k // CODEBOOK) % CODEBOOK, k % CODEBOOK], axis=1)
        dedup = np.zeros(n, dtype=np.int64)
    else:
        base = np.stack([rng.integers(0, CODEBOOK - 1, n), *rng.integers(0, CODEBOOK, (2, n))], axis=1)
        key = (base[:, 0] * CODEBOOK + base[:, 1]) * CODEBOOK + base[:, 2]
        order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        starts = np.r_[0, np.flatnonzero(np.diff(sorted_key)) + 1]
        sizes = np.diff(np.r_[starts, n])
        rank = np.arange(n) - np.repeat(starts, sizes)
        dedup = np.empty(n, dtype=np.int64)
        dedup[order] = rank
    sids = np.concatenate([base, dedup[:, None]], axis=1).astype(np.int64)
    return {
        "item_ids": ids,
        "base_codes": base.astype(np.int64),
        "semantic_ids": sids,
        "fallback": np.zeros(n, dtype=bool),
        "embedding_hash": rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64),
        "category": pa.array([f"cat-{i % 1000}" for i in range(n)]),
        "vectors": rng.standard_normal((n, dim), dtype=np.float32),
    }


def arrow_rows(rows: dict) -> pa.Table:
    """The same rows as one Arrow table (Lance's schema): codes as fixed-size lists, the packed ID for prefixes."""

    def fixed(values: np.ndarray, kind: pa.DataType) -> pa.Array:
        return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), kind), values.shape[1])

    return pa.table(
        {
            "item_id": rows["item_ids"],
            "semantic_id": fixed(rows["semantic_ids"], pa.int32()),
            "packed_id": layout().pack(rows["semantic_ids"]),
            "base_code": fixed(rows["base_codes"], pa.int32()),
            "fallback": rows["fallback"],
            "embedding_hash": rows["embedding_hash"],
            "category": rows["category"],
            "vector": fixed(rows["vectors"], pa.float32()),
        }
    )


# --- files and requests ----------------------------------------------------------------------------------------


def listing(root: Path) -> dict[str, tuple[int, int, int]]:
    out = {}
    for path in root.rglob("*"):
        if path.is_file() and path.name != "index.lock":  # the writer lock: no data
            st = path.stat()
            out[str(path.relative_to(root))] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


def written(before: dict, after: dict) -> tuple[int, int, int]:
    """(files created or replaced, their bytes, files removed) between two listings."""
    changed = [name for name, key in after.items() if before.get(name) != key]
    return len(changed), sum(after[name][2] for name in changed), len(set(before) - set(after))


def count_requests(lines: list[str]) -> dict[str, int]:
    """Requests per method (and in all) in lines of the moto server's request log."""
    counts = Counter(m.group(1) for line in lines if (m := REQUEST_LINE.search(line)))
    return {"total": sum(counts.values()), **dict(sorted(counts.items()))}


class MotoServer:
    """`moto_server` as a subprocess on loopback; its request log is read to count requests."""

    def __init__(self, workdir: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "moto.log"
        exe = Path(sys.executable).parent / "moto_server"
        cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "moto.server"]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([*cmd, "-H", "127.0.0.1", "-p", str(self.port)], stdout=out, stderr=out)
        import boto3

        self.s3 = boto3.client("s3", endpoint_url=self.endpoint, **CREDENTIALS)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.s3.create_bucket(Bucket=BUCKET)
                break
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit(f"moto_server did not start: {self.log.read_text()[-2000:]}") from None
                time.sleep(0.3)
        self._mark = 0

    def lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()

    def mark(self) -> None:
        time.sleep(0.2)  # the server logs after answering
        self._mark = len(self.lines())

    def since_mark(self) -> dict[str, int]:
        time.sleep(0.2)
        return count_requests(self.lines()[self._mark :])

    def lance_options(self) -> dict[str, str]:
        return {
            "aws_endpoint": self.endpoint,
            "aws_access_key_id": CREDENTIALS["aws_access_key_id"],
            "aws_secret_access_key": CREDENTIALS["aws_secret_access_key"],
            "aws_region": CREDENTIALS["region_name"],
            "allow_http": "true",
        }

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=20)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def quantiles(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1e3 for s in seconds)
    return {"median_ms": statistics.median(ms), "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))]}


# --- today's engine ----------------------------------------------------------------------------------------------


def semid_build(path: Path, rows: dict, dim: int) -> None:
    from semid.service.index.handle import SemanticIdIndex

    index = SemanticIdIndex.create(
        path, layout=layout(), fingerprint="spike", id_kind="int", vector_dim=dim, keep_columns=KEEP
    )
    with index.writer():
        with index.stage_vectors() as staged:
            for s in range(0, len(rows["item_ids"]), CHUNK):
                staged.write(rows["vectors"][s : s + CHUNK])
            staged.finish()
            index.append(**semid_batch(rows), vectors=staged)


def semid_batch(rows: dict) -> dict:
    return {
        "item_ids": rows["item_ids"],
        "base_codes": rows["base_codes"],
        "semantic_ids": rows["semantic_ids"],
        "fallback": rows["fallback"],
        "embedding_hash": rows["embedding_hash"],
        "columns": {"category": rows["category"]},
    }


def semid_open(path: Path):
    from semid.service.index.handle import SemanticIdIndex

    return SemanticIdIndex.open(path, read_only=True)


def semid_lookups(handle, keys: np.ndarray, prefixes: list[tuple[int, int]]) -> dict:
    snap = handle.snapshot
    item_s = [timed(snap.get_item, int(k))[1] for k in keys]

    def prefix(p: tuple[int, int]) -> list:
        _, rows, _ = snap.prefix_rows(p, limit=10)
        return snap.items(rows)

    prefix_s = [timed(prefix, p)[1] for p in prefixes]
    return {"item": quantiles(item_s), "prefix": quantiles(prefix_s)}


# --- Lance -------------------------------------------------------------------------------------------------------


def lance_build(uri: str, table: pa.Table, options: dict | None = None):
    import lance

    ds = lance.write_dataset(table, uri, storage_options=options, max_rows_per_file=len(table))
    ds.create_scalar_index("item_id", "BTREE")
    ds.create_scalar_index("packed_id", "BTREE")
    return ds


def lance_load_ids(path: Path) -> pa.Table:
    import lance

    columns = ["item_id", "packed_id", "base_code", "fallback", "embedding_hash", "category"]
    return lance.dataset(str(path)).to_table(columns=columns)


def lance_item(ds, key: int) -> pa.Table:
    return ds.to_table(filter=f"item_id = {key}")


def lance_prefix(ds, lo: int, hi: int) -> pa.Table:
    return ds.to_table(filter=f"packed_id >= {lo} AND packed_id < {hi}", limit=10)


def lance_lookups(ds, keys: np.ndarray, ranges: list[tuple[int, int]]) -> dict:
    item_s = []
    for k in keys:
        table, s = timed(lance_item, ds, int(k))
        assert table.num_rows == 1, (k, table.num_rows)
        item_s.append(s)
    prefix_s = [timed(lance_prefix, ds, lo, hi)[1] for lo, hi in ranges]
    return {"item": quantiles(item_s), "prefix": quantiles(prefix_s)}


# --- the run -----------------------------------------------------------------------------------------------------


def local_phase(workdir: Path, rows: dict, table: pa.Table, args: argparse.Namespace) -> dict:
    import lance

    from semid.service.index.handle import SemanticIdIndex

    n, rng = len(rows["item_ids"]), np.random.default_rng(1)
    keys = rng.integers(0, n, args.lookups)
    prefixes = [tuple(int(c) for c in rows["semantic_ids"][r, :2]) for r in rng.integers(0, n, args.lookups)]
    ranges = [layout().prefix_range(p) for p in prefixes]
    out: dict = {"semid": {}, "lance": {}}
    semid_path, lance_path = workdir / "semid-index", workdir / "lance-dataset"

    out["semid"]["build_s"] = timed(semid_build, semid_path, rows, args.dim)[1]
    out["lance"]["build_s"] = timed(lance_build, str(lance_path), table)[1]
    for engine in ("semid", "lance"):
        out[engine]["load_before_open"] = loadavg()
        opens, firsts = [], []
        for _ in range(3):
            if engine == "semid":
                handle, s = timed(semid_open, semid_path)
                first = timed(handle.snapshot.get_item, int(keys[0]))[1]
            else:
                handle, s = timed(lance.dataset, str(lance_path))
                first = timed(lance_item, handle, int(keys[0]))[1]
            opens.append(s)
            firsts.append(s + first)
        out[engine]["open_s"] = statistics.median(opens)
        if engine == "lance":  # what a semid snapshot holds in memory: every row's IDs, hash and kept column
            loads = [timed(lance_load_ids, lance_path)[1] for _ in range(3)]
            out[engine]["open_and_load_ids_s"] = statistics.median(loads)
        out[engine]["open_and_first_lookup_s"] = statistics.median(firsts)
        out[engine]["load_before_lookups"] = loadavg()
        if engine == "semid":
            out[engine]["lookups"] = semid_lookups(handle, keys, prefixes)
        else:
            out[engine]["lookups"] = lance_lookups(handle, keys, ranges)
    out["semid"]["files_after_build"] = len(listing(semid_path))
    out["lance"]["files_after_build"] = len(listing(lance_path))

    # appends of 4 items, then a reader's refresh
    writer = SemanticIdIndex.open(semid_path)
    reader = semid_open(semid_path)
    lance_reader = lance.dataset(str(lance_path))
    for engine in ("semid", "lance"):
        root = semid_path if engine == "semid" else lance_path
        out[engine]["load_before_appends"] = loadavg()
        appends, refreshes, files, size, removed = [], [], [], [], []
        for a in range(args.appends):
            batch = synthetic(4, args.dim, first_id=n + 4 * a, seed=100 + a, new_bucket=True)
            before = listing(root)
            if engine == "semid":
                s = timed(writer.append, **semid_batch(batch), vectors=batch["vectors"], persist_vectors=False)[1]
                r = timed(reader.refresh_if_changed)[1]
                assert reader.snapshot.get_item(int(batch["item_ids"][0]))["item_id"] == batch["item_ids"][0]
            else:
                s = timed(lance.write_dataset, arrow_rows(batch), str(lance_path), mode="append")[1]
                r = timed(lance_reader.checkout_latest)[1]
                assert lance_item(lance_reader, int(batch["item_ids"][0])).num_rows == 1
            f, b, d = written(before, listing(root))
            appends.append(s)
            refreshes.append(r)
            files.append(f)
            size.append(b)
            removed.append(d)
        out[engine]["append4"] = {
            **quantiles(appends),
            "files_written_median": statistics.median(files),
            "bytes_written_median": statistics.median(size),
            "files_removed_total": sum(removed),
            "per_append_files": files,
        }
        out[engine]["refresh_after_append"] = quantiles(refreshes)
    out["semid"]["segments_after_appends"] = len(writer.segments)
    out["semid"]["lookups_after_appends"] = semid_lookups(reader, keys, prefixes)
    out["semid"]["files_after_appends"] = len(listing(semid_path))
    ds = lance.dataset(str(lance_path))
    out["lance"]["fragments_after_appends"] = len(ds.get_fragments())
    out["lance"]["files_after_appends"] = len(listing(lance_path))
    out["lance"]["lookups_after_appends"] = lance_lookups(ds, keys, ranges)
    before = listing(lance_path)
    out["lance"]["load_before_compaction"] = loadavg()
    metrics, s = timed(ds.optimize.compact_files)
    ds = lance.dataset(str(lance_path))
    f, b, _ = written(before, listing(lance_path))
    out["lance"]["compaction"] = {
        "seconds": s,
        "fragments_after": len(ds.get_fragments()),
        "files_written": f,
        "bytes_written": b,
        "fragments_removed": metrics.fragments_removed,
        "fragments_added": metrics.fragments_added,
    }
    out["lance"]["lookups_after_compaction"] = lance_lookups(ds, keys, ranges)
    return out


def store_phase(workdir: Path, rows: dict, table: pa.Table, args: argparse.Namespace) -> dict:
    """Object storage: requests and seconds for open, refresh (unchanged and after a 4-item append), append."""
    import lance

    from semid.service.index.handle import SemanticIdIndex

    server = MotoServer(workdir)
    s3 = server.s3
    out: dict = {"semid": {}, "lance": {}}
    n = len(rows["item_ids"])
    key0 = int(np.random.default_rng(2).integers(0, n))
    try:
        # today's engine: the files of a local build, uploaded (not counted)
        local = workdir / "store-semid-writer"
        semid_build(local, rows, args.dim)
        for name in listing(local):
            if name != "index.lock":
                s3.upload_file(str(local / name), BUCKET, f"semid/{name}")
        etag = s3.head_object(Bucket=BUCKET, Key="semid/manifest.json")["ETag"]

        def fetch(cache: Path, names: list[str]) -> None:
            for name in names:  # one GET each
                (cache / name).parent.mkdir(parents=True, exist_ok=True)
                body = s3.get_object(Bucket=BUCKET, Key=f"semid/{name}")["Body"]
                with open(cache / name, "wb") as out:
                    shutil.copyfileobj(body, out, 1 << 20)

        def listed(cache: Path, body: bytes) -> list[str]:
            """The files ``body`` (a manifest) lists that ``cache`` does not hold yet."""
            manifest = json.loads(body)
            names = []
            for seg in manifest["segments"]:
                names.append(f"segments/{seg['name']}")
                if seg.get("vectors_sha256"):
                    names.append(f"segments/{Path(seg['name']).stem}.vectors")
            if manifest.get("faiss"):
                names.append("faiss.index")
            return [name for name in names if not (cache / name).exists()]

        def cold_open(cache: Path):
            cache.mkdir()
            fetch(cache, ["manifest.json"])
            fetch(cache, listed(cache, (cache / "manifest.json").read_bytes()))
            return SemanticIdIndex.open(cache, read_only=True)

        out["semid"]["load_before"] = loadavg()
        server.mark()
        cache = workdir / "store-semid-cache"
        reader, s = timed(cold_open, cache)
        out["semid"]["cold_open"] = {"seconds": s, "requests": server.since_mark()}

        def poll(reader, etag_seen: str) -> tuple[str, bool]:
            try:
                got = s3.get_object(Bucket=BUCKET, Key="semid/manifest.json", IfNoneMatch=etag_seen)
            except s3.exceptions.ClientError as exc:
                if exc.response["Error"]["Code"] == "304":
                    return etag_seen, False
                raise
            body = got["Body"].read()
            new = reader.path / "manifest.json.new"
            new.write_bytes(body)
            fetch(reader.path, listed(reader.path, body))
            os.replace(new, reader.path / "manifest.json")
            reader.refresh_if_changed()
            return got["ETag"], True

        server.mark()
        (_, changed), s = timed(poll, reader, etag)
        out["semid"]["refresh_unchanged"] = {"seconds": s, "requests": server.since_mark(), "changed": changed}

        writer = SemanticIdIndex.open(local)
        commits, refreshes = [], []
        for a in range(args.store_appends):
            batch = synthetic(4, args.dim, first_id=n + 4 * a, seed=200 + a, new_bucket=True)
            before = listing(local)
            server.mark()
            start = time.perf_counter()
            writer.append(**semid_batch(batch), vectors=batch["vectors"], persist_vectors=False)
            after = listing(local)
            for name in sorted(set(after) - {"manifest.json"}):
                if before.get(name) != after[name]:
                    s3.upload_file(str(local / name), BUCKET, f"semid/{name}")
            for name in sorted(set(before) - set(after)):
                s3.delete_object(Bucket=BUCKET, Key=f"semid/{name}")
            body = (local / "manifest.json").read_bytes()
            etag_written = s3.put_object(Bucket=BUCKET, Key="semid/manifest.json", Body=body, IfMatch=etag)["ETag"]
            commits.append({"seconds": time.perf_counter() - start, "requests": server.since_mark()})
            server.mark()
            (etag, changed), s = timed(poll, reader, etag)
            assert changed and etag == etag_written
            assert reader.snapshot.get_item(int(batch["item_ids"][0]))["item_id"] == batch["item_ids"][0]
            refreshes.append({"seconds": s, "requests": server.since_mark()})
        out["semid"]["append4_commit"] = commits
        out["semid"]["refresh_after_append"] = refreshes
        server.mark()
        timed(reader.snapshot.get_item, key0)
        out["semid"]["point_lookup_requests"] = server.since_mark()

        # Lance through its object store
        uri, options = f"s3://{BUCKET}/lance", server.lance_options()
        out["lance"]["build_s"] = timed(lance_build, uri, table, options)[1]
        out["lance"]["load_before"] = loadavg()
        server.mark()
        ds, s = timed(lance.dataset, uri, storage_options=options)
        out["lance"]["open"] = {"seconds": s, "requests": server.since_mark()}
        server.mark()
        s = timed(lance_item, ds, key0)[1]
        out["lance"]["first_point_lookup"] = {"seconds": s, "requests": server.since_mark()}
        server.mark()
        s = timed(lance_item, ds, key0 + 1 if key0 + 1 < n else 0)[1]
        out["lance"]["next_point_lookup"] = {"seconds": s, "requests": server.since_mark()}
        server.mark()
        s = timed(ds.checkout_latest)[1]
        out["lance"]["refresh_unchanged"] = {"seconds": s, "requests": server.since_mark()}
        commits, refreshes = [], []
        for a in range(args.store_appends):
            batch = synthetic(4, args.dim, first_id=n + 4 * a, seed=200 + a, new_bucket=True)
            server.mark()
            s = timed(lance.write_dataset, arrow_rows(batch), uri, mode="append", storage_options=options)[1]
            commits.append({"seconds": s, "requests": server.since_mark()})
            server.mark()
            s = timed(ds.checkout_latest)[1]
            found = lance_item(ds, int(batch["item_ids"][0])).num_rows
            assert found == 1
            refreshes.append({"seconds": s, "requests": server.since_mark(), "with_first_lookup": True})
        out["lance"]["append4_commit"] = commits
        out["lance"]["refresh_after_append_and_lookup"] = refreshes
        server.mark()
        s = timed(lambda: lance.dataset(uri, storage_options=options).optimize.compact_files())[1]
        out["lance"]["compaction"] = {"seconds": s, "requests": server.since_mark()}
    finally:
        server.stop()
    return out


def median_requests(entries: list[dict]) -> float:
    return statistics.median(e["requests"]["total"] for e in entries)


def summarise(local: dict, store: dict) -> list[dict]:
    s, la = local["semid"], local["lance"]
    rows = [
        ("build (s, not the comparison)", s["build_s"], la["build_s"]),
        ("open, local (s)", s["open_s"], la["open_s"]),
        ("open + first point look-up, local (s)", s["open_and_first_lookup_s"], la["open_and_first_lookup_s"]),
        ("open + every row's IDs in memory, local (s)", s["open_s"], la["open_and_load_ids_s"]),
        ("point look-up by item, median (ms)", s["lookups"]["item"]["median_ms"], la["lookups"]["item"]["median_ms"]),
        ("point look-up by item, p99 (ms)", s["lookups"]["item"]["p99_ms"], la["lookups"]["item"]["p99_ms"]),
        (
            "prefix look-up (2 codes, 10 rows), median (ms)",
            s["lookups"]["prefix"]["median_ms"],
            la["lookups"]["prefix"]["median_ms"],
        ),
        ("append 4 items, median (ms)", s["append4"]["median_ms"], la["append4"]["median_ms"]),
        ("append 4 items, p99 (ms)", s["append4"]["p99_ms"], la["append4"]["p99_ms"]),
        (
            "files created/replaced per append (median)",
            s["append4"]["files_written_median"],
            la["append4"]["files_written_median"],
        ),
        (
            "bytes written per append (median)",
            s["append4"]["bytes_written_median"],
            la["append4"]["bytes_written_median"],
        ),
        (
            "reader refresh after an append, median (ms)",
            s["refresh_after_append"]["median_ms"],
            la["refresh_after_append"]["median_ms"],
        ),
        (
            "files after the appends",
            s["files_after_appends"],
            la["files_after_appends"],
        ),
        (
            "item look-up after the appends, median (ms)",
            s["lookups_after_appends"]["item"]["median_ms"],
            la["lookups_after_appends"]["item"]["median_ms"],
        ),
        ("compaction (s)", "inside each append", la["compaction"]["seconds"]),
        (
            "item look-up after compaction, median (ms)",
            s["lookups_after_appends"]["item"]["median_ms"],
            la["lookups_after_compaction"]["item"]["median_ms"],
        ),
    ]
    if store:
        ss, sl = store["semid"], store["lance"]
        rows += [
            ("S3: cold open, requests", ss["cold_open"]["requests"]["total"], sl["open"]["requests"]["total"]),
            ("S3: cold open (s)", ss["cold_open"]["seconds"], sl["open"]["seconds"]),
            (
                "S3: open + first point look-up (s)",
                ss["cold_open"]["seconds"],
                sl["open"]["seconds"] + sl["first_point_lookup"]["seconds"],
            ),
            (
                "S3: first point look-up, requests",
                ss["point_lookup_requests"]["total"],
                sl["first_point_lookup"]["requests"]["total"],
            ),
            (
                "S3: next point look-up, requests",
                ss["point_lookup_requests"]["total"],
                sl["next_point_lookup"]["requests"]["total"],
            ),
            (
                "S3: refresh, nothing new, requests",
                ss["refresh_unchanged"]["requests"]["total"],
                sl["refresh_unchanged"]["requests"]["total"],
            ),
            (
                "S3: append 4 items + commit, requests (median)",
                median_requests(ss["append4_commit"]),
                median_requests(sl["append4_commit"]),
            ),
            (
                "S3: refresh after an append, requests (median; Lance incl. a look-up of a new item)",
                median_requests(ss["refresh_after_append"]),
                median_requests(sl["refresh_after_append_and_lookup"]),
            ),
            (
                "S3: refresh after an append, median (ms)",
                1e3 * statistics.median(e["seconds"] for e in ss["refresh_after_append"]),
                1e3 * statistics.median(e["seconds"] for e in sl["refresh_after_append_and_lookup"]),
            ),
            ("S3: compaction, requests", "inside each append", sl["compaction"]["requests"]["total"]),
        ]
    return [{"measure": m, "today's engine": a, "Lance": b} for m, a, b in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--appends", type=int, default=20, help="4-item appends on local disk, per engine.")
    parser.add_argument("--store-appends", type=int, default=5, help="4-item appends on the S3 server.")
    parser.add_argument("--lookups", type=int, default=500)
    parser.add_argument("--no-store", action="store_true", help="Skip the object-store part.")
    parser.add_argument("--name", default="storage_engine_spike")
    args = parser.parse_args()
    import lance

    workdir = Path(tempfile.mkdtemp(prefix="semid-storage-spike-"))
    try:
        load_start = loadavg()
        rows = synthetic(args.items, args.dim)
        table = arrow_rows(rows)
        local = local_phase(workdir, rows, table, args)
        print("local", local, flush=True)
        store = {} if args.no_store else store_phase(workdir, rows, table, args)
        print("store", store, flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    summary = summarise(local, store)
    data = {
        "items": args.items,
        "dim": args.dim,
        "pylance": lance.__version__,
        "load_1m_start": load_start,
        "load_1m_end": loadavg(),
        "local": local,
        "store": store,
        "summary": summary,
    }
    markdown = (
        f"{args.items:,} items, {args.dim}-d vectors, 3 x 256 codes + dedup digit, one kept column; pylance "
        f"{lance.__version__}. Load average (1 min) {load_start} at the start, {data['load_1m_end']} at the end "
        "(per phase in the JSON). The machine has 2 cores shared with other jobs.\n\n"
        + markdown_table(summary, ["measure", "today's engine", "Lance"])
        + "\n\nToday's engine on S3 replays the protocol of issue 24 item 2 with boto3 (see the script's docstring);"
        " Lance uses its own object store. Requests are counted from the moto server's request log.\n"
    )
    path = write_results(args.name, data, markdown)
    print(markdown)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
