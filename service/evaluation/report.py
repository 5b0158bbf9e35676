"""The HTML report of `semid evaluate`: one self-contained page (inline CSS and SVG, no scripts, no links out).

Headline verdicts first, then one section per aspect: code usage per level, collisions and bucket
sizes, the prefix tree's fan-out, neighbourhood preservation, co-liked items, reconstruction and the
checkpoint's training curves.
"""

from __future__ import annotations

from html import escape
from typing import Any

from semid.model.training.metrics import levels_from_flat
from semid.service.evaluation.charts import bar_chart, grouped_bars, line_chart
from semid.service.evaluation.verdicts import __doc__ as THRESHOLDS_DOC

MAX_BARS = 256
COLOURS = {"green": "#38a169", "amber": "#d69e2e", "red": "#e53e3e"}

_CSS = """
body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1140px;color:#1a202c;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 6px;border-bottom:1px solid #e2e8f0;padding-bottom:4px}
.meta{color:#4a5568;font-size:13px;margin-bottom:14px}
table{border-collapse:collapse;font-size:13px}td,th{padding:4px 10px;border-bottom:1px solid #edf2f7;text-align:left}
th{background:#f7fafc;font-weight:600}.num{text-align:right;font-variant-numeric:tabular-nums}
.dot{display:inline-block;width:11px;height:11px;border-radius:50%;margin-right:6px;vertical-align:-1px}
.status{font-weight:600;text-transform:uppercase;font-size:11px}
.charts{display:flex;flex-wrap:wrap;gap:14px 22px}.note{color:#4a5568;font-size:13px;max-width:900px}
.rule{color:#718096;font-size:11px}.nowrap{white-space:nowrap}pre{font-size:11px;color:#4a5568;white-space:pre-wrap}
"""


def render_report(metrics: dict[str, Any]) -> str:
    """The whole page as a string."""
    s = metrics["summary"]
    layout = metrics["layout"]
    sizes = layout.get("codebook_sizes", [])
    title = f"Semantic ID health: {metrics['index']}"
    meta = (
        f"{s['items']:,} items &middot; {len(sizes)} levels of {'/'.join(map(str, sizes))} codes + a dedup digit "
        f"(&lt; {layout.get('dedup_size')}) &middot; tokenizer {escape(str(metrics.get('tokenizer')))} &middot; "
        f"checkpoint {escape(str(metrics['checkpoint_fingerprint']))[:12]} &middot; catalog "
        f"{escape(metrics['catalog'])} &middot; sample {metrics['options']['sample']}, k {metrics['options']['k']}, "
        f"seed {metrics['options']['seed']}"
    )
    body = [
        f"<h1>{escape(title)}</h1><div class='meta'>{meta}</div>",
        _headline(metrics),
        _levels_section(metrics),
        _collisions_section(metrics),
        _fanout_section(metrics),
        _neighbours_section(metrics),
        _coliked_section(metrics),
        _reconstruction_section(metrics),
        _training_section(metrics),
        "<h2>How to read the verdicts</h2><pre>" + escape((THRESHOLDS_DOC or "").strip()) + "</pre>",
    ]
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>" + "\n".join(body) + "</body></html>\n"
    )


def _headline(m: dict[str, Any]) -> str:
    rows = []
    for v in m["verdicts"]:
        colour = COLOURS[v["status"]]
        rows.append(
            f"<tr><td class='nowrap'><span class='dot' style='background:{colour}'></span>"
            f"<span class='status' style='color:{colour}'>{v['status']}</span></td>"
            f"<td>{escape(v['label'])}</td><td class='nowrap'>{escape(v['value'])}</td>"
            f"<td>{escape(v['text'])}{_advice(v)}</td><td class='rule'>{escape(v['rule'])}</td></tr>"
        )
    counts = {c: sum(v["status"] == c for v in m["verdicts"]) for c in COLOURS}
    line = ", ".join(f"{n} {c}" for c, n in counts.items() if n)
    worst = next((c for c in ("red", "amber") if counts[c]), "green")
    flagged = [v["label"] for v in m["verdicts"] if v["status"] == worst]
    overall = (
        "Overall: healthy, every figure is green."
        if worst == "green"
        else f"Overall: {worst.upper()}, look first at: {', '.join(flagged)}."
    )
    match = m["catalog_match"]
    notes = []
    if match.get("catalog_items_not_in_index"):
        notes.append(f"{match['catalog_items_not_in_index']} catalog items are not in the index (ignored).")
    if match.get("embedding_changed"):
        notes.append(
            f"{match['embedding_changed']} items' embeddings changed since their IDs were assigned; "
            "figures use the catalog's current embeddings."
        )
    return (
        f"<h2>Summary ({line})</h2><p style='font-size:15px;margin:4px 0 10px'>"
        f"<span class='dot' style='background:{COLOURS[worst]}'></span>{escape(overall)}</p>"
        "<table><tr><th></th><th>figure</th><th>value</th><th>what it means</th><th>thresholds</th></tr>"
        f"{''.join(rows)}</table>" + "".join(f"<p class='note'>{escape(n)}</p>" for n in notes)
    )


def _downsample(counts: list[int]) -> list[float]:
    """At most MAX_BARS bars: the mean of each consecutive group of sorted counts."""
    if len(counts) <= MAX_BARS:
        return [float(c) for c in counts]
    step = len(counts) / MAX_BARS
    return [
        sum(counts[int(i * step) : max(int((i + 1) * step), int(i * step) + 1)])
        / max(int((i + 1) * step) - int(i * step), 1)
        for i in range(MAX_BARS)
    ]


def _levels_section(m: dict[str, Any]) -> str:
    charts, rows = [], []
    n = m["items"]
    for lv, base in zip(m["levels"]["emitted"], m["levels"]["base"], strict=True):
        k = lv["codebook_size"]
        charts.append(
            bar_chart(
                _downsample(lv["sorted_counts"]),
                title=f"Code usage, level {lv['level']} (sorted)",
                y_label="items per code",
                x_label=f"codes, most used first ({k} in all)",
                reference=n / k,
                reference_label="even use",
                width=360,
            )
        )
        differs = " (base codes: {:.1f})".format(base["perplexity"]) if base["perplexity"] != lv["perplexity"] else ""
        rows.append(
            f"<tr><td>{lv['level']}</td><td class='num'>{k}</td><td class='num'>{lv['utilisation']:.1%}</td>"
            f"<td class='num'>{lv['dead_codes']}</td><td class='num'>{lv['perplexity']:.1f}{differs}</td>"
            f"<td class='num'>{lv['max_perplexity']}</td><td class='num'>{lv['entropy']:.3f}</td></tr>"
        )
    return (
        "<h2>Code usage per level</h2><p class='note'>Items per code, most used code first, on the first L positions "
        "of the IDs (what a generative model emits). A flat profile near the dashed line is even use; a steep head "
        "means a few codes take most items. Perplexity is exp(entropy): the number of equally used codes the level "
        "is worth.</p>"
        f"<div class='charts'>{''.join(charts)}</div>"
        "<table><tr><th>level</th><th>K</th><th>codes used</th><th>dead codes</th><th>perplexity</th>"
        f"<th>most possible</th><th>entropy (nats)</th></tr>{''.join(rows)}</table>"
    )


def _collisions_section(m: dict[str, Any]) -> str:
    base = m["collisions"]["base"]
    hist = base["bucket_size_histogram"]
    labels = list(hist)
    values = [hist[k] for k in labels]
    chart = bar_chart(
        values,
        labels=labels,
        title="Bucket sizes (items per base code)",
        y_label="base codes (log scale)",
        x_label="items sharing one base code",
        log=True,
        value_labels=len(values) <= 30,
        width=420,
    )
    items_chart = bar_chart(
        [int(k) * v for k, v in hist.items()],
        labels=labels,
        title="Items by the size of their bucket",
        y_label="items (log scale)",
        x_label="items sharing one base code",
        log=True,
        value_labels=len(values) <= 30,
        color="#c05621",
        width=420,
    )
    dd = m["dedup_digit"]
    fb = m["fallback"]
    fb_text = f"{fb['items']} items needed the fallback (their bucket was full)"
    if fb["examples"]:
        fb_text += ", e.g. " + ", ".join(map(str, fb["examples"][:5]))
    emitted = m["collisions"]["emitted"]
    return (
        "<h2>Collisions</h2><p class='note'>"
        f"{base['distinct']:,} distinct base codes for {m['items']:,} items: collision rate "
        f"{base['collision_rate']:.2%} (1 - distinct / items), {base['colliding_items']:,} items share their base "
        f"code with another, largest bucket {base['largest_bucket']}. Items in one bucket are told apart by the "
        f"dedup digit (highest used: {dd['max_digit']} of {dd['dedup_size']}). {escape(fb_text)}. "
        f"On the emitted prefixes (after the fallback) the collision rate is {emitted['collision_rate']:.2%}.</p>"
        f"<div class='charts'>{chart}{items_chart}</div>"
    )


def _binned(hist: dict[str, int], max_bins: int = 32) -> tuple[list[str], list[float]]:
    """(labels, values) of a {value: count} histogram, merged into at most ``max_bins`` ranges."""
    pairs = sorted((int(k), v) for k, v in hist.items())
    lo, hi = pairs[0][0], pairs[-1][0]
    if hi - lo + 1 <= max_bins:
        dense = dict(pairs)
        return [str(i) for i in range(lo, hi + 1)], [float(dense.get(i, 0)) for i in range(lo, hi + 1)]
    width = -(-(hi - lo + 1) // max_bins)
    labels, values = [], []
    for start in range(lo, hi + 1, width):
        labels.append(f"{start}-{start + width - 1}")
        values.append(float(sum(v for k, v in pairs if start <= k < start + width)))
    return labels, values


def _fanout_section(m: dict[str, Any]) -> str:
    charts, rows = [], []
    sizes = m["layout"].get("codebook_sizes", [])
    for f in m["fanout"]:
        depth = f["depth"]
        k = sizes[depth] if depth < len(sizes) else None
        node = "root" if depth == 0 else f"depth-{depth} prefix"
        rows.append(
            f"<tr><td>{node}</td><td class='num'>{f['nodes']:,}</td><td class='num'>{f['mean_children']:.1f}</td>"
            f"<td class='num'>{f['median_children']:.0f}</td><td class='num'>{f['max_children']}</td>"
            f"<td class='num'>{k}</td></tr>"
        )
        if depth == 0:
            continue
        labels, values = _binned(f["histogram"])
        charts.append(
            bar_chart(
                values,
                labels=labels,
                title=f"Fan-out at depth {depth} (children per prefix)",
                y_label="prefixes",
                x_label=f"distinct level-{depth + 1} codes under one depth-{depth} prefix",
                color="#2f855a",
                width=420,
            )
        )
    return (
        "<h2>Prefix tree fan-out</h2><p class='note'>How many next codes follow each prefix that occurs. A generative "
        "model choosing the next code picks among these children; very small fan-out means later levels add little, "
        "fan-out near K at every node means the levels are not nested by meaning.</p>"
        f"<div class='charts'>{''.join(charts)}</div>"
        "<table><tr><th>node</th><th>nodes</th><th>mean children</th><th>median</th><th>max</th><th>K</th></tr>"
        f"{''.join(rows)}</table>"
    )


def _neighbours_section(m: dict[str, Any]) -> str:
    nb = m["neighbours"]
    levels = len(m["layout"].get("codebook_sizes", []))
    chart = grouped_bars(
        [f"d={d} (lift {nb[f'nn_lift_d{d}']:g}x)" for d in range(1, levels + 1)],
        {
            f"{nb['k']} nearest neighbours": [nb[f"nn_share_d{d}"] for d in range(1, levels + 1)],
            "random pairs": [nb[f"random_share_d{d}"] for d in range(1, levels + 1)],
        },
        title="Neighbour share by depth (nn vs random)",
        y_label="pairs sharing the first d codes",
        x_label="prefix depth d",
        percent=True,
        width=540,
    )
    lifts = ", ".join(f"d={d}: {nb[f'nn_lift_d{d}']}x" for d in range(1, levels + 1))
    return (
        "<h2>Neighbourhood preservation</h2><p class='note'>For "
        f"{nb['sampled_items']:,} sampled items, the share of their {nb['k']} nearest embedding neighbours (exact "
        "cosine) that share the first d codes, against random pairs. Lift: "
        f"{lifts}. Prefix recall@{nb['k']}: ranking all items by the length of the prefix they share with an item "
        f"(ties in random order) puts {nb['prefix_recall_at_k']:.1%} of its true {nb['k']} nearest neighbours in the "
        f"top {nb['k']} (a random ranking: {nb['prefix_recall_random']:.2%}).</p>"
        f"<div class='charts'>{chart}</div>"
    )


def _coliked_section(m: dict[str, Any]) -> str:
    co = m["coliked"]
    if co is None:
        return (
            "<h2>Co-liked items</h2><p class='note'>Not measured: run with <code>--interactions FILE</code> "
            "(user, item, rating) to see whether items liked by one user share prefixes.</p>"
        )
    levels = len(m["layout"].get("codebook_sizes", []))
    rng = range(1, levels + 1)
    cols = co["columns"]
    head = (
        f"<h2>Co-liked items</h2><p class='note'>{co['interactions']:,} interactions ({escape(cols['user'])}, "
        f"{escape(cols['item'])}, {escape(cols['rating'])}); {co['liked']:,} with rating &ge; {co['min_rating']:g}, "
        f"{co['liked_known']:,} of them on indexed items, from {co['users']:,} users. {co['unknown_items']:,} liked "
        f"items ({co['unknown_interactions']:,} interactions) are not in the index and are ignored"
        + (f" (e.g. {escape(', '.join(co['unknown_examples'][:3]))})" if co["unknown_examples"] else "")
        + "."
    )
    if not co["pairs"]:
        return head + " No user liked two indexed items: nothing to compare.</p>"
    chart = grouped_bars(
        [f"d={d} (lift {_lift(co[f'lift_d{d}'], short=True)})" for d in rng],
        {
            "co-liked pairs": [co[f"share_d{d}"] for d in rng],
            "popularity-matched": [co[f"popular_share_d{d}"] for d in rng],
            "random pairs": [co[f"random_share_d{d}"] for d in rng],
        },
        title="Co-liked share by depth (co-liked vs random)",
        y_label="pairs sharing the first d codes",
        x_label="prefix depth d",
        percent=True,
        width=540,
    )
    lifts = ", ".join(
        f"d={d}: {_lift(co[f'lift_d{d}'])} vs random, {_lift(co[f'popular_lift_d{d}'])} vs popularity-matched"
        + (
            " (noisy: under 30 pairs share the prefix)"
            if min(co[f"sharing_pairs_d{d}"], co[f"random_sharing_pairs_d{d}"]) < 30
            else ""
        )
        for d in rng
    )
    return (
        head + f" {co['pairs']:,} seeded pairs of items liked by one user, against random items and against items "
        f"drawn from other liked interactions (as popular as co-liked items). Lift: {escape(lifts)}.</p>"
        f"<div class='charts'>{chart}</div>"
    )


def _lift(value: float | None, *, short: bool = False) -> str:
    if value is None:
        return "n/a" if short else "n/a (no baseline pair shares the prefix)"
    return f"{value:g}x"


def _reconstruction_section(m: dict[str, Any]) -> str:
    r = m["reconstruction"]
    if r is None:
        return "<h2>Reconstruction</h2><p class='note'>Not measured: the index holds no checkpoint copy.</p>"
    return (
        "<h2>Reconstruction</h2><p class='note'>How well each item's codes rebuild its (normalised) embedding, on "
        f"{r['sampled_items']:,} sampled items: squared error per item {r['recon_mse']:.4g} (the training curves' "
        f"recon_mse), {r['recon_mse_per_dim']:.3g} per dimension, {r['recon_relative']:.1%} of the embeddings' "
        f"energy. From the emitted codes (after the fallback): {r['recon_mse_emitted']:.4g}.</p>"
    )


def _training_section(m: dict[str, Any]) -> str:
    rows = [r for r in m["training"] if "recon_mse" in r]
    head = "<h2>Training curves</h2>"
    if not rows:
        return head + "<p class='note'>The checkpoint's metrics.json has no per-epoch figures.</p>"
    if len(rows) == 1:
        r = rows[0]
        ppl = " / ".join(f"{lv['perplexity']:.0f}" for lv in levels_from_flat(r) if "perplexity" in lv)
        return head + (
            "<p class='note'>One fitting pass (RQ-KMeans fits each level once): no curve. Its figures: recon_mse "
            f"{r['recon_mse']:.4g}, perplexity per level {ppl}"
            + (f", base collision rate {r['base_collision_rate']:.2%}" if "base_collision_rate" in r else "")
            + ".</p>"
        )
    epochs = [r["epoch"] for r in rows]
    charts = [
        line_chart(
            epochs,
            {"recon_mse": [r.get("recon_mse") for r in rows]},
            title="Reconstruction error per epoch",
            x_label="epoch",
            y_label="recon_mse",
        ),
    ]
    per_row = [{lv["level"]: lv.get("perplexity") for lv in levels_from_flat(r)} for r in rows]
    levels = sorted({level for row in per_row for level, ppl in row.items() if ppl is not None})
    if levels:
        charts.append(
            line_chart(
                epochs,
                {f"level {level}": [row.get(level) for row in per_row] for level in levels},
                title="Perplexity per level per epoch",
                x_label="epoch",
                y_label="perplexity",
            )
        )
    if any("base_collision_rate" in r for r in rows):
        charts.append(
            line_chart(
                epochs,
                {"collision rate": [r.get("base_collision_rate") for r in rows]},
                title="Base collision rate per epoch",
                x_label="epoch",
                y_label="collision rate",
            )
        )
    return (
        head + "<p class='note'>From the checkpoint's metrics.json (epochs after the codebooks exist; per-epoch "
        "figures may be on a fixed sample of items).</p>"
        f"<div class='charts'>{''.join(charts)}</div>"
    )


def _advice(verdict: dict) -> str:
    """An amber or red verdict's advice, on its own line of the cell."""
    return f"<br><b>Try:</b> {escape(verdict['advice'])}" if verdict.get("advice") else ""
