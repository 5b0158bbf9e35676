"""A long schemathesis pass over the whole OpenAPI schema, in-process (no network).

    python benchmarks/fuzz_api.py                  # the full pass: 300 examples per operation
    python benchmarks/fuzz_api.py --examples 10    # a quick smoke run

The approach of tests/reliability/test_fuzz.py, with many more examples: the app is built with
semid.service.api.app.create_app over an index in a temporary directory, the schema is loaded with
schemathesis.openapi.from_asgi("/openapi.json", app), and every operation's cases come from
operation.as_strategy() under hypothesis (@given/@settings: --examples per operation, no deadline, health
checks suppressed, no example database, derandomized with --seed). Each case is sent with case.call() and
checked with case.validate_response(...), every check but one.

Excluded check: `positive_data_acceptance` ("a schema-valid request is accepted"). A request can fit the
schema and still be wrong for this checkpoint and index: an embedding of the wrong dimension, a code >= K, a
prefix longer than L+1, an unknown cursor or item. Those get a documented 4xx with an error body, which is the
behaviour we want, so that check would report the API's validation as failures.

Set-up (not measured): the seeded synthetic catalog of semid.model.data.synthetic (--items x --dim, with a `title`
column kept in the index), a default-architecture RQ-VAE trained for 4 epochs on it (assign_speed.quick_checkpoint),
and semid.service.assign.assign_catalog. The service runs with SEMID_MAX_BATCH 64, page size 200 and a 1 MiB body
limit (as in the test) and no API key, so fuzzed writes are accepted and really register items in the temporary
index. A small --dim (default 16) makes generated embeddings of the right length, and so the encode/assign/
register paths past validation, more likely.

Recorded per operation: cases run, responses by status class, 5xx responses, failures by check (the checks named
by each schemathesis Failure), exceptions raised by the call itself, and a few sample failures (method, path,
status, title). A failing case never stops the run: failures are caught and counted inside the hypothesis test
(so hypothesis neither stops at the first one nor shrinks it), and an error in an operation as a whole (e.g. its
strategy cannot be built) is recorded for that operation and the next one runs. After the pass `check_index`
must still pass on the index the fuzzed writes went to.

Writes benchmarks/results/fuzz_api.{md,json}.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.assign_speed import quick_checkpoint  # noqa: E402
from benchmarks.common import markdown_table, write_results  # noqa: E402

MAX_SAMPLES = 5  # sample failures kept per operation
COLUMNS = ["operation", "cases", "2xx", "4xx", "5xx", "failures", "failures_by_check", "call_errors", "error", "s"]


def build_app(workdir: Path, items: int, dim: int, seed: int):
    """Catalog -> quick checkpoint -> index -> the FastAPI app over it (in-process)."""
    from semid.model.data.synthetic import synthetic_catalog, write_catalog
    from semid.service.api.app import create_app
    from semid.service.api.settings import ServiceSettings
    from semid.service.api.state import ServiceState
    from semid.service.assign import assign_catalog

    catalog = synthetic_catalog(items=items, dim=dim, seed=seed)
    path = write_catalog(catalog, workdir / "catalog.parquet")
    ckpt = quick_checkpoint(catalog.embeddings, workdir / "checkpoint")
    index = workdir / "index"
    assign_catalog(checkpoint=ckpt, catalog=path, index_dir=index, keep_columns=("title",))
    settings = ServiceSettings(index_dir=index, max_batch=64, max_page=200, max_body_bytes=1 << 20)
    return create_app(settings, state=ServiceState.load(settings)), index


def fuzz_operation(operation, examples: int, seed: int) -> dict:
    """Run up to `examples` cases of one operation; count statuses and failures, never raise."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hypothesis_seed
    from schemathesis.core.failures import Failure, FailureGroup
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    statuses: Counter = Counter()
    by_check: Counter = Counter()
    call_errors: Counter = Counter()
    samples: list[dict] = []
    cases = {"n": 0, "failing": 0}

    def record(case, status, failure: str, title: str) -> None:
        if len(samples) < MAX_SAMPLES:
            samples.append(
                {
                    "method": case.method,
                    "path": case.formatted_path,
                    "status": status,
                    "failure": failure,
                    "title": title[:300],
                }
            )

    @hypothesis_seed(seed)
    @given(case=operation.as_strategy())
    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case) -> None:
        cases["n"] += 1
        try:
            response = case.call()
        except Exception as err:  # the app raised through the transport: count it, keep going
            call_errors[type(err).__name__] += 1
            cases["failing"] += 1
            record(case, None, f"call raised {type(err).__name__}", str(err))
            return
        statuses[f"{response.status_code // 100}xx"] += 1
        failures: list[Failure] = []
        try:
            case.validate_response(response, excluded_checks=[positive_data_acceptance])
        except FailureGroup as group:
            failures = list(group.exceptions)
        except Failure as failure:
            failures = [failure]
        if response.status_code >= 500 and not failures:
            by_check["5xx (no check failed)"] += 1
            record(case, response.status_code, "5xx", response.text)
        if failures:
            cases["failing"] += 1
        for failure in failures:
            name = ",".join(type(failure).checks) or type(failure).__name__
            by_check[name] += 1
            record(case, response.status_code, name, failure.title)

    start = time.perf_counter()
    error = None
    try:
        run()
    except Exception as err:  # the operation as a whole failed (strategy, hypothesis): record it, go on
        error = f"{type(err).__name__}: {str(err)[:500]}"
    return {
        "operation": f"{operation.method.upper()} {operation.path}",
        "cases": cases["n"],
        "failing_cases": cases["failing"],
        "statuses": dict(statuses),
        "5xx": statuses.get("5xx", 0),
        "failures": sum(by_check.values()),
        "failures_by_check": dict(by_check),
        "call_errors": dict(call_errors),
        "error": error,
        "samples": samples,
        "seconds": round(time.perf_counter() - start, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=300, help="hypothesis examples per operation (default 300)")
    ap.add_argument("--items", type=int, default=5_000, help="items in the synthetic index (default 5000)")
    ap.add_argument("--dim", type=int, default=16, help="embedding dimension (default 16)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", help="where the temporary index goes (default: the system temp dir)")
    args = ap.parse_args()
    if args.examples < 1 or args.items < 100 or args.dim < 2:
        ap.error("--examples >= 1, --items >= 100, --dim >= 2")

    import schemathesis

    from semid.service.index.check import check_index

    tmp = Path(tempfile.mkdtemp(prefix="semid-fuzz-", dir=args.workdir))
    try:
        t0 = time.perf_counter()
        app, index = build_app(tmp, args.items, args.dim, args.seed)
        setup_s = time.perf_counter() - t0
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        rows: list[dict] = []
        schema_errors: list[str] = []
        for result in schema.get_all_operations():
            try:
                operation = result.ok()
            except Exception as err:  # an operation schemathesis cannot read: record it, go on
                schema_errors.append(f"{type(err).__name__}: {str(err)[:300]}")
                continue
            row = fuzz_operation(operation, args.examples, args.seed)
            rows.append(row)
            print(
                f"{row['operation']}: {row['cases']} cases, {row['5xx']} 5xx, {row['failures']} failures"
                + (f", error {row['error']}" if row["error"] else ""),
                flush=True,
            )
        report = check_index(index)
        check = {"ok": report.ok, "items": report.item_count, "problems": report.problems}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    totals = {
        "operations": len(rows),
        "cases": sum(r["cases"] for r in rows),
        "5xx": sum(r["5xx"] for r in rows),
        "failures": sum(r["failures"] for r in rows),
        "failing_cases": sum(r["failing_cases"] for r in rows),
        "operation_errors": sum(1 for r in rows if r["error"]),
        "call_errors": sum(sum(r["call_errors"].values()) for r in rows),
        "failures_by_check": dict(sum((Counter(r["failures_by_check"]) for r in rows), Counter())),
    }
    passed = (
        not totals["5xx"]
        and not totals["failures"]
        and not totals["operation_errors"]
        and not totals["call_errors"]
        and not schema_errors
        and check["ok"]
    )
    data = {
        "index": {
            "built": f"semid.model.data.synthetic {args.items} x {args.dim} (title kept), "
            "quick default RQ-VAE (4 epochs)"
        },
        "setup_seconds": round(setup_s, 2),
        "excluded_checks": ["positive_data_acceptance"],
        "totals": totals,
        "schema_errors": schema_errors,
        "index_check_after": check,
        "passed": passed,
        "rows": rows,
        "options": vars(args),
    }
    table = [
        {
            "operation": r["operation"],
            "cases": r["cases"],
            "2xx": r["statuses"].get("2xx", 0),
            "4xx": r["statuses"].get("4xx", 0),
            "5xx": r["5xx"],
            "failures": r["failures"],
            "failures_by_check": ", ".join(f"{k}: {v}" for k, v in r["failures_by_check"].items()) or "-",
            "call_errors": ", ".join(f"{k}: {v}" for k, v in r["call_errors"].items()) or "-",
            "error": r["error"] or "-",
            "s": r["seconds"],
        }
        for r in rows
    ]
    md = (
        f"In-process (schemathesis.openapi.from_asgi over create_app), {args.examples} examples per operation, "
        f"hypothesis seed {args.seed}. Index: {data['index']['built']}; service limits: max batch 64, max page 200, "
        f"1 MiB body, no API key (fuzzed writes register items). Excluded check: positive_data_acceptance (a "
        f"schema-valid request may still be wrong for this checkpoint and index; it gets a documented 4xx).\n\n"
        f"**{totals['cases']:,} cases over {totals['operations']} operations: {totals['5xx']} 5xx responses, "
        f"{totals['failures']} check failures, {totals['call_errors']} calls that raised, "
        f"{totals['operation_errors']} operations that errored.** `check_index` after the pass: "
        f"{'ok' if check['ok'] else 'FAILED'} ({check['items']} items).\n\n"
    )
    md += markdown_table(table, COLUMNS)
    samples = [(r["operation"], s) for r in rows for s in r["samples"]]
    if samples:
        md += "\n\nSample failures:\n\n" + "\n".join(
            f"- {op}: {s['method']} {s['path']} -> {s['status']}: {s['failure']}: {s['title']}" for op, s in samples
        )
    if schema_errors:
        md += "\n\nOperations schemathesis could not load: " + "; ".join(schema_errors)
    md += f"\n\n**{'PASSED' if passed else 'FAILED'}**"
    path = write_results("fuzz_api", data, md)
    print(md)
    print(f"written to {path}")
    if not passed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
