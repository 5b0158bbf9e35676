"""The generative-retrieval benchmark's report: the markdown tables of OUT/NAME.md and the JSON beside it
(``write``). Reads the table ``genrec_metrics.summarise`` builds and the run's ``data`` dict; computes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.common import command, machine
from benchmarks.compare_tokenizers import CODEBOOK, LEVELS
from benchmarks.genrec_rerank import SUFFIX


def popularity_table(data: dict) -> list[str]:
    b = data.get("by_popularity")
    if not b or not b["rows"]:
        return []
    head = " | ".join(f"{name} ({n} users)" for name, n in zip(b["buckets"], b["users"], strict=True))
    lines = [
        "",
        "## Recall@10 by how often the test item appears in training (test)",
        "",
        f"| generator | {head} |",
        "|---|" + "---|" * len(b["buckets"]),
    ]
    for name, values in b["rows"].items():
        lines.append(f"| {name} | " + " | ".join("-" if v is None else f"{v:.4f}" for v in values) + " |")
    if b.get("recommended"):
        lines += [
            "",
            "## Where the top-10 recommendations come from (test)",
            "",
            "Share of each row's top-10 items (all users and seeds) by the item's count in training; `test items`: "
            "the same shares for the held-out test items.",
            "",
            "| generator | " + " | ".join(b["buckets"]) + " |",
            "|---|" + "---|" * len(b["buckets"]),
        ]
        for name, values in b["recommended"].items():
            lines.append(f"| {name} | " + " | ".join(f"{v:.4f}" for v in values) + " |")
    return lines


def seeds_table(table: list[dict]) -> list[str]:
    """Per row and seed: the test figures and how training ended (the spread the seed average hides)."""
    lines = [
        "| generator | seed | Recall@10 | NDCG@10 | epochs run | best epoch | stopped by | valid Recall@10 (sample) "
        "| train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        for f in r.get("per_seed") or []:
            if f["epochs_run"] is None:  # popularity: nothing trained, one list for every seed
                continue
            lines.append(
                f"| {r['generator']} | {f['seed']} | {f['recall@10']:.4f} | {f['ndcg@10']:.4f} | {f['epochs_run']} | "
                f"{f['best_epoch']} | {f['stopped']} | {f['best_valid_recall10']} | {f['train_s']} |"
            )
    return lines


def _ci(m: dict) -> str:
    return f"{m['mean']:.4f} [{m['lo']:.4f}, {m['hi']:.4f}]"


def results_table(table: list[dict], part: str) -> list[str]:
    """The markdown table of every generator's figures on one part (test, test_heldout, ...)."""
    head = (
        "| generator | IDs | Recall@5 | Recall@10 | NDCG@5 | NDCG@10 | invalid IDs unconstrained (top-1) | "
        "Recall@10 unconstrained | decode ms/user | train s |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in table:
        if r["status"] != "ok" or part not in r:
            lines.append(f"| {r['generator']} | {r['status']}: {r.get('error', '')} |" + " |" * 8)
            continue
        m = r[part]
        ids = r.get("ids") or {}
        ids_text = f"collisions {ids['base_collision_rate']:.2%}" if ids else "-"
        invalid = (
            f"{m['invalid_rate_unconstrained']:.2%} ({m['invalid_top1_unconstrained']:.2%})"
            if "invalid_rate_unconstrained" in m
            else "-"
        )
        free = _ci(m["recall@10_unconstrained"]) if "recall@10_unconstrained" in m else "-"
        lines.append(
            f"| {r['generator']} | {ids_text} | {_ci(m['recall@5'])} | {_ci(m['recall@10'])} | {_ci(m['ndcg@5'])} | "
            f"{_ci(m['ndcg@10'])} | {invalid} | {free} | {m.get('decode_ms_per_user', '-')} | "
            f"{r.get('train_s') if r.get('train_s') is not None else '-'} |"
        )
    return lines


def difference_table(comparisons: list[dict]) -> list[str]:
    """Paired differences; the seeds column says how many seeds' runs each side averages per user (popularity
    is deterministic: one list for every seed)."""

    def seeds(c: dict) -> str:
        mine, other = c.get("seeds") or (None, None)
        return f"{mine or '-'} / {other or '-'}"

    def per_seed(c: dict) -> str:
        return ", ".join(f"{k}: {v['recall@10']:+.4f}" for k, v in (c.get("per_seed") or {}).items()) or "-"

    def both(c: dict) -> str:
        two = c.get("seeds_and_users")
        return f"{_ci(two['recall@10'])} | {_ci(two['ndcg@10'])}" if two else "- | -"

    return [
        "| semid | other | seeds (semid / other) | Recall@10 difference | NDCG@10 difference | Recall@10 difference "
        "per seed | Recall@10, seeds and users resampled | NDCG@10, seeds and users resampled |",
        "|---|---|---|---|---|---|---|---|",
        *(
            f"| {c['semid']} | {c['other']} | {seeds(c)} | {_ci(c['recall@10'])} | {_ci(c['ndcg@10'])} | "
            f"{per_seed(c)} | {both(c)} |"
            for c in comparisons
        ),
    ]


def held_out_section(data: dict, table: list[dict]) -> list[str]:
    h = data.get("holdout")
    if not h:
        return []
    return [
        "",
        f"## Test users whose test item the tokenizers never saw ({h['users']} users)",
        "",
        f"Every tokenizer was fitted on the same seeded {h['fit_items']} items (`split_rows(n, {h['share']}, "
        f"seed={h['seed']})`) and encoded all {data['items']} items; the generators are the same as above. "
        "These users' figures (95 % bootstrap intervals over them):",
        "",
        *results_table(table, "test_heldout"),
        "",
        "Paired differences on these users:",
        "",
        *difference_table(h["comparisons"]),
    ]


def published_section(data: dict) -> list[str]:
    entries = data.get("published") or []
    if not entries:
        return ["", "## Published figures", "", "None recorded for this data set (benchmarks/genrec_published.py)."]
    lines = [
        "",
        "## Published figures (not run here)",
        "",
        "| model | data | Recall@5 | Recall@10 | NDCG@5 | NDCG@10 | source |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        cells = [f"{e[m]:.4f}" if e.get(m) is not None else "-" for m in ("recall@5", "recall@10", "ndcg@5", "ndcg@10")]
        data_text = e["dataset"] + ("" if e.get("same_data") else " (other data)")
        lines.append(f"| {e['model']} | {data_text} | " + " | ".join(cells) + f" | {e['source']} |")
    return lines


def training_table(table: list[dict], rows_wall: dict) -> list[str]:
    """Per row: epochs run, best epoch, why it stopped, validation Recall@10 at the best epoch, wall time."""
    lines = [
        "| generator | epochs run | best epoch | stopped by | valid Recall@10 (sample) | train s | row wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in table:
        t = r.get("train_info")
        if not t:
            continue
        chosen = f" (lr {t['chosen']['lr']}, dropout {t['chosen']['dropout']})" if t.get("chosen") else ""
        wall = ", ".join(str(w) for w in rows_wall.get(r["generator"], []) if w is not None) or "-"
        lines.append(
            f"| {r['generator']}{chosen} | {t.get('epochs_run')} | {t.get('best_epoch')} | "
            f"{t.get('stopped')} | {t.get('best_valid_recall10')} | {r.get('train_s')} | {wall} |"
        )
    return lines


def lever_notes(table: list[dict]) -> str:
    """What the generator-lever marks in row names mean (empty when no row has one)."""
    names = " ".join(r["generator"] for r in table)
    notes = []
    if "+user-token" in names:
        notes.append(
            "Rows marked `+user-token N`: the encoder input starts with a user token (the user's name hashed "
            "into N buckets, TIGER's user token). "
        )
    if SUFFIX.strip() in names:
        alphas = {r["generator"]: r.get("pop_alpha") for r in table if r["generator"].endswith(SUFFIX)}
        notes.append(
            "Rows marked `+pop-correction`: the row above them (the same trained models) with each user's "
            "top candidates (the beams; item-id: its top items, as many) re-ranked by log p(item) - alpha x "
            "log(1 + the item's training count), alpha chosen per model on the validation users (alpha per seed: "
            + "; ".join(f"{n.removesuffix(SUFFIX)} {a}" for n, a in alphas.items())
            + "). "
        )
    if "-dedup-digit" in names:
        notes.append(
            "Rows marked `-dedup-digit`: the generator reads and emits only the 3 base codes; a decoded code "
            "tuple several items share stands for all of them, most popular in training first (ties: lower "
            "catalog row), so Recall and NDCG count items as in the other rows. "
        )
    return "".join(notes)


def decay_note(budget: dict) -> str:
    """How the learning rate moves after the warm-up (``--lr-decay``), for the report's generator line."""
    if budget.get("lr_decay", "constant") == "constant":
        return ""
    return f", then a {budget['lr_decay']} decay to 0 at the last epoch of the cap (every model, item IDs too)"


def carried_note(data: dict) -> str:
    """Which rows were not trained again but carried over from a run with another ``--min-epochs`` (empty: none)."""
    carried = data.get("carried") or {}
    if not carried:
        return ""
    rows = "; ".join(
        f"{label} seed(s) {', '.join(map(str, c['seeds']))}" for label, c in sorted(carried.items()) if c["seeds"]
    )
    origins = sorted({m for c in carried.values() for m in c.get("from_min_epochs", [])})
    return (
        f"Carried over from the same run with --min-epochs {', '.join(map(str, origins))} (`--carry-from`; "
        "benchmarks/genrec_carry.py: patience did not stop them before this run's --min-epochs, so their training "
        f"is the one this run would do): {rows}. "
    )


def markdown(data: dict, table: list[dict]) -> str:
    lines = results_table(table, "test")
    d = data["data"]
    b = data["budget"]
    s = data["settings"]
    if s.get("generator") == "tiger":
        gen = (
            f"TIGER-shaped encoder-decoder (d_model {b['width']}, {b['layers']} encoder + {b['layers']} decoder "
            f"layers, {b['heads']} heads of {b['d_kv']}, feed-forward {b['ff']}, dropout {b['dropout']}), one "
            f"example per training item (its up to {s['history']} previous items)"
        )
    else:
        gen = (
            f"decoder-only transformer, width {b['width']}, {b['layers']} layers, {b['heads']} heads, "
            f"dropout {b['dropout']}; {data['windows']} training windows of up to {s['history'] + 1} items"
        )
    if s.get("train_items"):
        gen += (
            f"; every row learns from each user's {s['train_items']} most recent training items only "
            f"(`--train-items`: {data['training_targets']} of "
            f"{data.get('all_training_targets', '?')} training targets)"
        )
    ib = data.get("item_budget", b)
    return "\n".join(
        [
            f"Catalog `{data['catalog']}` ({data['items']} items); interactions `{data['interactions']}` "
            f"(columns {d['columns']}; {d['kept']} kept of {d['interactions']}, "
            f"{'every row' if s['min_rating'] is None else 'rating >= ' + str(s['min_rating'])}); "
            f"{data['users']} users, leave-one-out (last item test, second-last validation, held out of training); "
            f"history capped at the last {s['history']} items.",
            "",
            f"Generator (same for every ID row): {gen}. AdamW lr {b['lr']}, batches of {b['batch_size']}, linear "
            f"warm-up over the first epoch{decay_note(b)}; at most {b['epochs']} epochs, early stopping on the "
            "Recall@10 of "
            + (f"{s['val_users']} validation users (a fixed sample)" if s.get("val_users") else "every validation user")
            + f" every {b['eval_every']} epoch(s), "
            f"patience {b['patience']}"
            + (f" (not before epoch {b['min_epochs']})" if b.get("min_epochs") else "")
            + ", best state kept"
            + (f", training capped at {b['budget_s'] / 60:.0f} CPU-min" if b.get("budget_s") else "")
            + f". Item-id baseline: SASRec-shaped (width {ib['width']}, {ib['layers']} layers, full softmax over "
            f"the catalog, at most {ib['epochs']} epochs), same stopping rule, lr x dropout grid "
            f"{list(s.get('item_lrs', []))} x "
            f"{list(s.get('item_dropouts', []))} chosen on validation. Beam search with "
            f"{s['beams']} beams over the {LEVELS + 1} tokens of the next item's ID (3 x {CODEBOOK} codes + semid's "
            "dedup digit), constrained by `SemanticIdTrie`. " + lever_notes(table) + carried_note(data) + "Seeds: "
            f"{data['seeds']} (metrics averaged per user over seeds). Run time {data['run_s'] / 60:.1f} min "
            f"(rows reused from earlier processes count their own time below); load average "
            f"{data.get('load_avg_start')} at start, {data['load_avg_end']} at end.",
            "",
            f"## Test ({data['users']} users), 95 % bootstrap intervals over users",
            "",
            *lines,
            "",
            "Invalid IDs unconstrained: share of all beams (of the top-1 beam) of the same beam search without the "
            "trie that are no item's ID; Recall@10 unconstrained: those beams with the invalid ones dropped. "
            "decode ms/user: constrained beam search (item-id: one forward pass and a top-k). Collisions: share "
            "of items sharing their 3 base codes with an earlier item (resolved by the dedup digit).",
            *published_section(data),
            "",
            "## Training (first seed)",
            "",
            *training_table(table, data.get("row_wall_s", {})),
            *(
                ["", "## Each seed (test)", "", *seeds_table(table)]
                if any((r.get("seeds") or 0) > 1 for r in table) or len(data.get("seeds") or []) > 1
                else []
            ),
            "",
            "## semid against each other row (paired bootstrap over the same users, test)",
            "",
            "Difference: of the seed-averaged per-user values, users resampled. Per seed: each seed both rows ran. "
            "Seeds and users resampled: a two-level bootstrap over the seeds both rows ran (seeds drawn, then "
            "users), so the interval also carries the spread between training runs.",
            "",
            *difference_table(data["comparisons"]),
            *popularity_table(data),
            *held_out_section(data, table),
        ]
    )


def write(out: Path, data: dict, table: list[dict], name: str = "generative_retrieval") -> Path:
    out.mkdir(parents=True, exist_ok=True)
    payload = {"command": command(), "machine": machine(), **data}
    payload["rows"] = [{k: v for k, v in r.items() if not k.startswith("_")} for r in table]
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    header = f"# {name}\n\nCommand: `{payload['command']}`\n\nMachine: {json.dumps(payload['machine'])}\n\n"
    (out / f"{name}.md").write_text(header + markdown(data, table) + "\n")
    return out / f"{name}.md"
