"""Does the adaptive default (graph targets only where the catalog gains from them) lose anywhere?

    python benchmarks/adaptive_defaults.py run movielens --seeds 0,1      # one run per catalog
    python benchmarks/adaptive_defaults.py run synthetic100k --seeds 0 --no-holdout
    python benchmarks/adaptive_defaults.py report                        # adaptive_defaults.{md,json}

Three RQ-VAE configs side by side, in one process per catalog, on the same data and seeds:

- ``plain``: ``graph_targets`` false (the RQ-VAE before the neighbour-aware first level);
- ``graph``: graph targets always (``graph_min_gain`` 0: the previous default);
- ``adaptive``: ``SemidConfig()`` defaults, which measure the catalog and decide (semid.model.first_level.adaptive).

The adaptive run trains first and records its decision; after it, the config it resolved to (plain
when off, graph when on) is not trained again: its training is the same, seed for seed (the decision
only drops the targets before anything random happens; tests/model/test_adaptive.py checks the codes
are equal), and its row says "same training as adaptive". Every row is trained on the whole catalog
(figures of ``compare_tokenizers``: collisions, per-level perplexity, neighbour share and lift by depth,
prefix recall@10, reconstruction) and, unless ``--no-holdout``, once more on the seeded 80 % of
``holdout.split_rows`` with every item encoded (figures of the held-out 20 %).

Catalogs: MovieLens and goodbooks-10k (`../shared/data`), PyPI summaries (benchmarks/text_catalog.py,
built first), and synthetic catalogs (semid.model.data.synthetic) of different cluster structures. Each
``run`` writes its rows to ``<results>/adaptive_defaults/<catalog>.json``; ``report`` gathers them.
Torch runs on 1 thread (the machine is shared): timings are indicative only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import MOVIELENS, RESULTS, SHARED_DATA, command, machine, write_results  # noqa: E402
from benchmarks.compare_tokenizers import Fitted, figures, holdout_figures  # noqa: E402
from benchmarks.text_catalog import CACHE as TEXT_CACHE  # noqa: E402
from semid.model.config import SemidConfig  # noqa: E402
from semid.model.data.catalog import read_catalog  # noqa: E402
from semid.model.data.synthetic import synthetic_catalog  # noqa: E402
from semid.model.tokenizers.rqvae import build_tokenizer  # noqa: E402
from semid.model.training.checkpoint import load_checkpoint  # noqa: E402
from semid.model.training.job import train_tokenizer  # noqa: E402
from semid.model.training.train import _graph_targets  # noqa: E402  (the training's own graph build)
from semid.service.evaluation.holdout import split_rows  # noqa: E402

PARTS = RESULTS / "adaptive_defaults"
HOLDOUT_SHARE = 0.2
VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {"graph_targets": False},
    "graph": {"graph_min_gain": 0.0},
    "adaptive": {},
}


def _synthetic(**kw: Any) -> tuple[Callable[[], np.ndarray], str]:
    args = ", ".join(f"{k}={v}" for k, v in kw.items())
    return (lambda: synthetic_catalog(**kw).embeddings), f"semid.model.data.synthetic.synthetic_catalog({args})"


def _parquet(path: Path, hint: str = "") -> tuple[Callable[[], np.ndarray], str]:
    def load() -> np.ndarray:
        if not path.is_file():
            raise SystemExit(f"catalog {path} not found{hint}")
        return read_catalog(path).embeddings

    return load, str(path)


CATALOGS: dict[str, tuple[Callable[[], np.ndarray], str]] = {
    "movielens": _parquet(MOVIELENS, " (needs ../shared/data)"),
    "goodbooks": _parquet(SHARED_DATA / "goodbooks-10k" / "items.parquet", " (needs ../shared/data)"),
    "pypi20k": _parquet(TEXT_CACHE / "pypi20k.parquet", " (build it with benchmarks/text_catalog.py)"),
    "synthetic30k": _synthetic(items=30_000),
    "synthetic30k_few_large": _synthetic(items=30_000, categories=8, subcategories=4),
    "synthetic30k_many_small": _synthetic(items=30_000, categories=64, subcategories=32),
    "synthetic100k": _synthetic(items=100_000),
}

FULL = [
    "base_collision_rate",
    "largest_bucket",
    "perplexity_l1",
    "perplexity_l2",
    "perplexity_l3",
    "nn_share_d1",
    "nn_share_d2",
    "nn_lift_d1",
    "nn_lift_d2",
    "recall_at_10",
    "recon_mse",
]
HELD = [
    "heldout_nn_share_d1",
    "heldout_nn_share_d2",
    "heldout_base_collision_rate",
    "heldout_perplexity_l1",
    "heldout_perplexity_l2",
    "heldout_perplexity_l3",
    "heldout_recon_mse",
]
LOWER_IS_BETTER = {"base_collision_rate", "largest_bucket", "recon_mse"}
# judged in the verdict (recon and the raw shares are shown: the graph level trades reconstruction for
# neighbours on purpose, and a share rises for free with fewer, larger codes)
JUDGED = ["base_collision_rate", "perplexity_l2", "perplexity_l3", "nn_lift_d1", "nn_lift_d2", "recall_at_10"]
JUDGED_HELD = ["heldout_nn_share_d1", "heldout_base_collision_rate", "heldout_perplexity_l1"]


def train_and_encode(raw: np.ndarray, fit: np.ndarray, train: dict[str, Any]) -> tuple[Fitted, dict[str, Any]]:
    """Train an RQ-VAE on ``raw[fit]`` and encode every item; the fit and the training's decision record."""
    cfg = SemidConfig.from_dict({"train": {"threads": 1, **train}})
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        _, metrics = train_tokenizer(raw[fit], cfg, tmp)
        fit_s = time.perf_counter() - start
        tok = load_checkpoint(tmp).tokenizer.eval()
    with torch.inference_mode():
        x = torch.from_numpy(raw)
        codes = torch.cat([tok.encode(x[s : s + 16384]).codes for s in range(0, len(raw), 16384)]).numpy()
        recon = torch.cat([tok.decode(torch.from_numpy(codes[s : s + 16384])) for s in range(0, len(raw), 16384)])
    fitted = Fitted(codes.astype(np.int64), fit_s, 1.0, recon.numpy(), {"train": train})
    return fitted, {"graph_targets": metrics.get("graph_targets"), "fit_s": round(fit_s, 1)}


def run_split(raw: np.ndarray, x: np.ndarray, seed: int, holdout: bool, epochs: int | None) -> list[dict[str, Any]]:
    """The three variants on one seed, trained on the whole catalog or on the held-out split."""
    if holdout:
        fit, held = split_rows(len(raw), HOLDOUT_SHARE, seed)
    else:
        fit, held = np.arange(len(raw)), None
    rows: dict[str, dict[str, Any]] = {}
    for name in ("adaptive", "plain", "graph"):
        train = {**VARIANTS[name], "seed": seed, **({"epochs": epochs} if epochs else {})}
        if name != "adaptive" and rows["adaptive"]["uses_graph"] == (name == "graph"):
            rows[name] = {**rows["adaptive"], "variant": name, "trained": "same training as adaptive"}
            continue
        load = os.getloadavg()
        print(f"seed {seed} {'holdout' if holdout else 'full'} {name}: training (load {load[0]:.2f})", flush=True)
        fitted, record = train_and_encode(raw, fit, train)
        if held is None:
            out = figures(x, fitted, None, 10, 2000, seed)["row"]
        else:
            out = holdout_figures(x, fitted, fit, held, 10, 2000, seed)["row"]
        decision = record["graph_targets"]
        uses = name == "graph" or (name == "adaptive" and bool(decision and decision["use"]))
        rows[name] = {
            "variant": name,
            "seed": seed,
            "split": "holdout" if holdout else "full",
            "trained": "yes",
            "uses_graph": uses,
            "decision": decision,
            "load_avg_before": [round(v, 2) for v in load],
            **{k: v for k, v in out.items() if k != "encode_items_per_s"},
        }
        print(f"  {json.dumps({k: rows[name].get(k) for k in ['fit_s', *FULL[:6], *HELD[:3]]})}", flush=True)
    return [rows[name] for name in VARIANTS]


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    load_embeddings, source = CATALOGS[args.catalog]
    raw = np.ascontiguousarray(load_embeddings(), dtype=np.float32)
    x = raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    load = [round(v, 2) for v in os.getloadavg()]
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        rows += run_split(raw, x, seed, False, args.epochs)
        if not args.no_holdout:
            rows += run_split(raw, x, seed, True, args.epochs)
    PARTS.mkdir(parents=True, exist_ok=True)
    part = {
        "catalog": args.catalog,
        "source": source,
        "items": int(raw.shape[0]),
        "dim": int(raw.shape[1]),
        "seeds": args.seeds,
        "epochs": args.epochs or SemidConfig().train.epochs,
        "holdout_share": None if args.no_holdout else HOLDOUT_SHARE,
        "command": command(),
        "machine": machine(),
        "started": started,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "load_avg_start": load,
        "load_avg_end": [round(v, 2) for v in os.getloadavg()],
        "rows": rows,
    }
    path = PARTS / f"{args.catalog}{args.part}.json"
    path.write_text(json.dumps(part, indent=2, default=str) + "\n")
    print(f"written {path}")


def measure(args: argparse.Namespace) -> None:
    """The adaptive default's decision on whole catalogs, without training: the same graph build and rule
    as ``semid train`` (seed 0), for catalogs too large to train three times on this machine."""
    from semid.model.first_level.adaptive import decide_graph_targets

    torch.set_num_threads(1)
    path = PARTS / "decisions.json"
    done = json.loads(path.read_text()) if path.is_file() else {}
    cfg = SemidConfig()
    for name in args.catalogs:
        load_embeddings, source = CATALOGS[name]
        x = torch.from_numpy(np.ascontiguousarray(load_embeddings(), dtype=np.float32))
        tok = build_tokenizer(cfg.model.model_copy(update={"input_dim": x.shape[1]}), cfg.train)
        start, load = time.perf_counter(), [round(v, 2) for v in os.getloadavg()]
        targets = _graph_targets(tok, x, cfg)
        decision = decide_graph_targets(
            targets.start.numpy(), targets.labels.numpy(), targets.neighbours.numpy(), min_gain=cfg.train.graph_min_gain
        )
        done[name] = {
            "source": source,
            "items": int(x.shape[0]),
            **decision.record(),
            "seconds": round(time.perf_counter() - start, 1),
            "load_avg_before": load,
            "command": command(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        }
        print(name, json.dumps(done[name]), flush=True)
        PARTS.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(done, indent=2) + "\n")


# ------------------------------------------------------------------------------------------------ report


def _mean(values: list[float]) -> float:
    return float(np.mean(values))


def summarise(part: dict[str, Any]) -> dict[str, Any]:
    """Per variant: mean over seeds of each figure and its seed range; the adaptive-vs-plain verdict."""
    out: dict[str, Any] = {}
    for split, keys in (("full", FULL), ("holdout", HELD)):
        by_variant = {}
        for variant in VARIANTS:
            rows = [r for r in part["rows"] if r["variant"] == variant and r["split"] == split]
            if not rows:
                continue
            by_variant[variant] = {
                k: {
                    "mean": _mean([r[k] for r in rows]),
                    "range": float(np.ptp([r[k] for r in rows])),
                    "seeds": len(rows),
                }
                for k in keys
                if all(r.get(k) is not None for r in rows)
            }
        if by_variant:
            out[split] = by_variant
    return out


def verdict(summary: dict[str, Any], against: str) -> list[str]:
    """Figures where the adaptive default is worse than ``against`` by more than the seed-to-seed range
    (the larger of the two rows'; with one seed there is no range and any difference counts)."""
    worse = []
    for split, keys in (("full", JUDGED), ("holdout", JUDGED_HELD)):
        rows = summary.get(split, {})
        if "adaptive" not in rows or against not in rows:
            continue
        for k in keys:
            a, b = rows["adaptive"].get(k), rows[against].get(k)
            if a is None or b is None:
                continue
            diff = a["mean"] - b["mean"]
            if k.removeprefix("heldout_") in LOWER_IS_BETTER:
                diff = -diff
            noise = max(a["range"], b["range"])
            if diff < 0 and -diff > noise + 1e-12:
                worse.append(f"{k} {a['mean']:.4g} vs {b['mean']:.4g} (seed range {noise:.2g})")
    return worse


def _share(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _cell(stat: dict[str, Any] | None) -> str:
    if stat is None:
        return ""
    mean = stat["mean"]
    text = f"{mean:.4g}"
    if stat["seeds"] > 1:
        text += f" ±{stat['range'] / 2:.2g}"
    return text


def _merged(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per catalog: runs with more seeds of a catalog (``--part``) add their rows."""
    out: dict[str, dict[str, Any]] = {}
    for p in parts:
        if p["catalog"] not in out:
            out[p["catalog"]] = p
            continue
        first = out[p["catalog"]]
        first["rows"] = first["rows"] + p["rows"]
        first["seeds"] = first["seeds"] + p["seeds"]
        first["command"] = f"{first['command']}` and `{p['command']}"
        first["finished"] = p["finished"]
    return list(out.values())


def report(args: argparse.Namespace) -> None:
    parts = _merged([json.loads(p.read_text()) for p in sorted(PARTS.glob("*.json")) if p.stem != "decisions"])
    decisions_path = PARTS / "decisions.json"
    measured = json.loads(decisions_path.read_text()) if decisions_path.is_file() else {}
    order = list(CATALOGS)
    parts.sort(key=lambda p: order.index(p["catalog"]) if p["catalog"] in order else len(order))
    md = [
        "Three RQ-VAE configs per catalog, in one process per catalog (`adaptive_defaults.py run <catalog>`): "
        "**plain** = `graph_targets` false; **graph** = graph targets always (`graph_min_gain 0`, the previous "
        "default); **adaptive** = the new defaults (`graph_min_gain 0.03`, semid.model.first_level.adaptive). "
        "All other settings are `SemidConfig()` defaults (3 x 256; 60 epochs unless the table says fewer), torch on 1 "
        "thread. A config the adaptive "
        "run resolved to is not trained twice (same training seed for seed; marked `=`). Figures: mean over "
        "the seeds, ± half the seed-to-seed range. Full = trained on the whole catalog; held-out = trained on "
        f"the seeded {1 - HOLDOUT_SHARE:.0%} (`holdout.split_rows(n, {HOLDOUT_SHARE}, seed)`), figures of the "
        "other items. First-level anchors are at their default (every training item of a catalog of at most "
        "16,384 items, so MovieLens and goodbooks have them, in every variant). Timings are on a shared 2-core "
        "machine (load averages below): not speed figures.",
        "",
        "## Decision per catalog",
        "",
        "| catalog | items | seeds | epochs | agreement k-means | agreement refined | gain | agreement trained | "
        "agreement plain run | after training | graph targets | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    summaries = {}
    for p in parts:
        decisions = [r["decision"] for r in p["rows"] if r["variant"] == "adaptive" and r["decision"]]
        first = next((r["decision"] for r in p["rows"] if r["variant"] == "adaptive" and r["split"] == "full"), None)
        uses = sorted({"on" if d["use"] else "off" for d in decisions})
        md.append(
            f"| {p['catalog']} | {p['items']} | {','.join(map(str, p['seeds']))} | {p.get('epochs', '')} | "
            f"{first['kmeans_agreement']:.3f} | "
            f"{first['graph_agreement']:.3f} | {first['gain']:+.3f} | {_share(first.get('trained_agreement'))} | "
            f"{_share(first.get('plain_agreement'))} | {first['reason'] if 'trained_agreement' in first else ''} | "
            f"{'/'.join(uses)} "
            f"({len(decisions)} trainings) | {p['load_avg_start']} |"
        )
        summaries[p["catalog"]] = summarise(p)
    md += [
        "",
        "Agreement: share of (item, one of its 10 nearest neighbours) pairs with one first-level label, k-means "
        "vs the graph-refined labels, on the items of the graph (a 50k sample above 50k items), seed 0, whole "
        "catalog. Graph targets are used when the gain is >= 0.03. Agreement trained: the same share under the "
        "trained first codes (nearest centroid); below k-means' + 0.03 a run without targets is trained too "
        "(agreement plain run) and the targets stay only if they beat it by 0.03 (`judge_trained`; parts "
        "written before that check have these columns empty).",
    ]
    if measured:
        md += [
            "",
            "### Decision only (`adaptive_defaults.py measure`: the graph build and rule of `semid train`, untrained)",
            "",
            "| catalog | items | agreement k-means | agreement refined | gain | graph targets | seconds | load avg |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, d in sorted(measured.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99):
            md.append(
                f"| {name} | {d['items']} | {d['kmeans_agreement']:.3f} | {d['graph_agreement']:.3f} | "
                f"{d['gain']:+.3f} | {'on' if d['use'] else 'off'} | {d['seconds']} | {d['load_avg_before']} |"
            )
    for split, keys, title in (("full", FULL, "Trained on the whole catalog"), ("holdout", HELD, "Held-out items")):
        md += ["", f"## {title}", "", "| catalog | variant | " + " | ".join(keys) + " |"]
        md.append("|---|---|" + "---|" * len(keys))
        for p in parts:
            s = summaries[p["catalog"]].get(split, {})
            for variant, stats in s.items():
                same = any(r["variant"] == variant and r["split"] == split and r["trained"] != "yes" for r in p["rows"])
                label = f"{variant} =" if same else variant
                md.append(f"| {p['catalog']} | {label} | " + " | ".join(_cell(stats.get(k)) for k in keys) + " |")
    md += ["", "## Verdict: where the adaptive default is worse beyond the seed range", ""]
    verdicts = {}
    for p in parts:
        s = summaries[p["catalog"]]
        verdicts[p["catalog"]] = {"vs_plain": verdict(s, "plain"), "vs_graph": verdict(s, "graph")}
        for against in ("plain", "graph"):
            worse = verdicts[p["catalog"]][f"vs_{against}"]
            md.append(f"- {p['catalog']}, vs {against}: " + ("; ".join(worse) if worse else "nowhere"))
    md += [
        "",
        f"Judged figures: {', '.join(JUDGED)} (whole catalog) and {', '.join(JUDGED_HELD)} (held-out). "
        "Reconstruction and raw shares are shown, not judged: the graph level trades reconstruction for "
        "neighbours on purpose, and a share rises for free with fewer, larger codes (the lift is its ranked "
        "form). With one seed there is no seed range: any difference counts.",
        "",
        "## Runs",
        "",
    ]
    for p in parts:
        md.append(
            f"- {p['catalog']}: `{p['command']}`, {p['started']} to {p['finished']}, load {p['load_avg_start']}"
            f" -> {p['load_avg_end']}; source `{p['source']}`"
        )
    data = {"parts": parts, "decisions_only": measured, "summaries": summaries, "verdicts": verdicts}
    path = write_results(args.name, data, "\n".join(md))
    print(path.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    r = sub.add_parser("run", help="train the three configs on one catalog")
    r.add_argument("catalog", choices=sorted(CATALOGS))
    r.add_argument("--seeds", default="0", type=lambda s: [int(v) for v in s.split(",")])
    r.add_argument("--no-holdout", action="store_true", help="whole-catalog figures only")
    r.add_argument("--epochs", type=int, help="fewer epochs for smoke runs (default: the config's)")
    r.add_argument("--part", default="", help="suffix of the part file: more seeds of a catalog in another run")
    m = sub.add_parser("measure", help="the decision only (no training) on whole catalogs")
    m.add_argument("catalogs", nargs="+", choices=sorted(CATALOGS))
    rep = sub.add_parser("report", help="gather the runs into adaptive_defaults.{md,json}")
    rep.add_argument("--name", default="adaptive_defaults")
    args = ap.parse_args()
    {"run": run, "measure": measure, "report": report}[args.what](args)


if __name__ == "__main__":
    main()
