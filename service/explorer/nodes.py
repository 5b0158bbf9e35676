"""What a code means: for a node of the ID tree (a prefix), the terms of its items' kept text columns, a label
and representative items; the same for each of its children, so the tree shows them without opening them.

Bounded: a node's items are read through a sample of about ``SCAN_ITEMS``, stratified by next code (each child
gets its share of the sample, and at least ``MIN_PER_CHILD`` items when it has them, spread evenly over its ID
range), so a node of ten million items costs what one of ten thousand does. Term shares and lifts are then
estimates over the sample; ``scanned`` says how many items a figure read (all of them for a small node).

A child's terms are ranked against its parent's (``terms.rank_terms``); the root's by share alone. The label is
the first two terms. Representatives: the sampled items whose code vectors (the quantized latents the k-NN
index holds, decoded from each item's ID by the checkpoint) are nearest the mean code vector of the node's
sampled items, one per base code first (items sharing a base code share a code vector), ties in ID order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from semid.service.encoder import CheckpointEncoder
from semid.service.explorer.cache import SnapshotCache
from semid.service.explorer.terms import item_terms, rank_terms, text_columns
from semid.service.index.snapshot import IndexSnapshot

SCAN_ITEMS = 8_000  # items sampled per node (each child gets at least MIN_PER_CHILD, so a little more)
MIN_PER_CHILD = 24
TERMS = 8
LABEL_TERMS = 2
REPRESENTATIVES = 3

# per snapshot, bounded in memory: answers (a root's can hold ~1,000 items' worth of JSON) and the samples behind
# them (term counts per child; kept for a while so a node's children, opened next, reuse their parent's)
_cache = SnapshotCache(max_entries=64)
_samples = SnapshotCache(max_entries=16)
_NO_ROWS = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class _Group:
    """The sampled items of one child of a node."""

    count: int  # items under the child
    rows: np.ndarray  # sampled rows, in ID order
    terms: Counter  # sampled items holding each term
    central: np.ndarray  # representative rows, most central first


@dataclass(frozen=True)
class _Sample:
    """A node's stratified sample, by next code."""

    count: int
    groups: dict[int, _Group]
    share: dict[str, float]  # estimated fraction of the node's items holding each term
    central: np.ndarray  # the node's representative rows
    columns: list[str]


def explain_prefix(snapshot: IndexSnapshot, encoder: CheckpointEncoder, prefix: Sequence[int]) -> dict:
    """``{"prefix", "columns", "scan_limit", "node", "children"}``: what ``prefix`` (0..L+1 codes; () is the
    root) and each of its children mean. Cached per snapshot."""
    codes = snapshot.layout.validate_prefix(prefix, min_length=0)
    return _cache.get(snapshot, codes, lambda: _explain(snapshot, encoder, codes))


def _explain(snapshot: IndexSnapshot, encoder: CheckpointEncoder, codes: tuple[int, ...]) -> dict:
    has_children = len(codes) <= snapshot.layout.levels
    here = _sample(snapshot, encoder, codes) if has_children else None
    if not codes:
        assert here is not None
        node = _describe_root(snapshot, here)
    else:
        parent = _sample(snapshot, encoder, codes[:-1])
        group = parent.groups.get(codes[-1])
        node = _describe(snapshot, codes, group, parent.share)
    children = [_describe(snapshot, (*codes, c), g, here.share) for c, g in here.groups.items()] if here else []
    columns = here.columns if here else text_columns(snapshot.state.kept_schema)
    return {"prefix": list(codes), "columns": columns, "scan_limit": SCAN_ITEMS, "node": node, "children": children}


def _sample(snapshot: IndexSnapshot, encoder: CheckpointEncoder, codes: tuple[int, ...]) -> _Sample:
    return _samples.get(snapshot, codes, lambda: _read_sample(snapshot, encoder, codes))


def _read_sample(snapshot: IndexSnapshot, encoder: CheckpointEncoder, codes: tuple[int, ...]) -> _Sample:
    layout, state = snapshot.layout, snapshot.state
    columns = text_columns(state.kept_schema)
    kids = snapshot.children(codes)
    total = sum(n for _, n in kids)
    if not total:
        return _Sample(0, {}, {}, _NO_ROWS, columns)
    floor = min(MIN_PER_CHILD, max(1, SCAN_ITEMS // len(kids)))
    packed, order = state.sorted_packed, state.order  # active rows in ID order: a child is one run
    picks = []
    for code, n in kids:
        quota = min(n, max(floor, SCAN_ITEMS * n // total))
        start = int(np.searchsorted(packed, layout.prefix_range((*codes, code))[0]))
        picks.append(order[start + np.arange(quota, dtype=np.int64) * n // quota])  # evenly over the run
    rows = np.concatenate(picks)
    kept = state.kept_rows(rows)
    terms = [item_terms(values.get(c) for c in columns) for values in kept]
    sids = state.semantic_ids[rows, : layout.levels]
    vectors = encoder.vectors(sids)
    keys = [s.tobytes() for s in np.ascontiguousarray(sids, dtype=np.int64)]
    weights = np.concatenate([np.full(p.shape[0], n / p.shape[0]) for p, (_, n) in zip(picks, kids, strict=True)])
    groups, share, at = {}, Counter(), 0
    for (code, n), pick in zip(kids, picks, strict=True):
        span = slice(at, at + pick.shape[0])
        counts = Counter(t for item in terms[span] for t in item)
        for term, k in counts.items():
            share[term] += k * n / pick.shape[0] / total
        central = pick[_central(vectors[span], keys[span], None)]
        groups[int(code)] = _Group(count=int(n), rows=pick, terms=counts, central=central)
        at = span.stop
    return _Sample(total, groups, dict(share), rows[_central(vectors, keys, weights)], columns)


def _central(vectors: np.ndarray, keys: list[bytes], weights: np.ndarray | None) -> np.ndarray:
    """Indices of the REPRESENTATIVES vectors nearest their (weighted) mean, one per key first."""
    centre = np.average(vectors.astype(np.float64), axis=0, weights=weights)
    by = np.argsort(((vectors - centre) ** 2).sum(1), kind="stable")
    chosen, seen = [], set()
    for i in by.tolist():
        if keys[i] not in seen:
            chosen.append(i)
            seen.add(keys[i])
            if len(chosen) == REPRESENTATIVES:
                break
    for i in by.tolist():
        if len(chosen) == REPRESENTATIVES:
            break
        if i not in chosen:
            chosen.append(i)
    return np.array(chosen, dtype=np.int64)


def _label(terms: list[dict]) -> str | None:
    return " · ".join(t["term"] for t in terms[:LABEL_TERMS]) or None


def _describe(snapshot: IndexSnapshot, codes: tuple[int, ...], group: _Group | None, parent: dict) -> dict:
    if group is None:  # a valid prefix no item has
        return {"prefix": list(codes), "count": 0, "scanned": 0, "label": None, "terms": [], "representatives": []}
    terms = rank_terms(group.terms, int(group.rows.shape[0]), parent, top=TERMS)
    return {
        "prefix": list(codes),
        "count": group.count,
        "scanned": int(group.rows.shape[0]),
        "label": _label(terms),
        "terms": terms,
        "representatives": snapshot.items(group.central),
    }


def _describe_root(snapshot: IndexSnapshot, here: _Sample) -> dict:
    """The root has no parent: its terms rank by (estimated) share alone."""
    counts = Counter()
    for group in here.groups.values():
        counts.update(group.terms)
    scanned = sum(int(g.rows.shape[0]) for g in here.groups.values())
    ranked = sorted((-here.share[t], t) for t, n in counts.items() if n >= min(2, scanned))
    terms = [{"term": t, "items": counts[t], "share": round(-s, 4), "lift": 1.0} for s, t in ranked[:TERMS]]
    return {
        "prefix": [],
        "count": here.count,
        "scanned": scanned,
        "label": _label(terms),
        "terms": terms,
        "representatives": snapshot.items(here.central),
    }
