"""Downstream benchmark: do semid's IDs make a better generative recommender?

    python benchmarks/generative_retrieval.py --catalog ../shared/data/movielens-small/items.parquet \\
        --interactions ../shared/data/movielens-small/ratings.csv --out benchmarks/results
    python benchmarks/generative_retrieval.py ... --tokenizers faiss-rq,random --tiny --out /tmp/gr

Every tokenizer (fitted by ``benchmarks/compare_tokenizers.py``'s functions, 3 levels x 256 codes, plus random
codes of the same shape) gets semid's dedup digit, so every item has a unique 4-token ID. One generator is trained
from scratch on each tokenizer's IDs with the same budget: ``--generator tiger`` (TIGER's encoder-decoder shape,
``genrec_model.TigerGenerator``) or ``--generator small`` (decoder-only), on users' histories in time order
(implicit feedback: every row is an interaction unless ``--min-rating``), leave-one-out: the last item is the
test target, the second-last the validation target (held out of training; it ends the test history). Every
model stops early on the validation Recall@10 of a fixed sample of users and keeps its best state. The next item
is decoded by beam search constrained by ``semid.service.generation.trie.SemanticIdTrie`` and mapped back to
items through it; the same beam search without the trie measures how often the generator invents IDs no item
has. In the same run: a SASRec-shaped item-id model (softmax over the catalog, lr and dropout chosen on
validation) and a popularity ranking. Finished rows are saved (``--rows-dir``) so several processes can share a
run and ``--merge-only`` reports them together; docs/downstream.md explains the options and the table.
Writes OUT/generative_retrieval.{json,md}.

With ``--holdout-share S`` every tokenizer is fitted on the same seeded 1-S of the items
(``semid.service.evaluation.holdout.split_rows``, as ``semid evaluate --holdout-share``) and encodes all of
them; the report adds the users whose test item is one the tokenizers never saw (new items), and is written to
OUT/generative_retrieval_holdout.{json,md}.

The ``semid-rqvae-interactions`` row trains semid with ``--interactions`` (co-liked pairs in the first level)
on the interactions file minus every scored user's validation and test items (``training_interactions``),
so the tokenizer never sees the pairs the generator is scored on. ``semid-rqvae-letter`` trains the same way with
LETTER-style alignment and code diversity on (``LETTER``; semid.model.training.collab); ``semid-rqvae-adaptive`` sizes
the codebooks from the catalog (``adaptive_codes``).

Generator levers (off by default, each part of the row signature, so run one per ``--rows-dir`` and pair them
with ``--compare-to``): ``--user-token N`` (TIGER's user token, the user hashed into N buckets) and
``--dedup-digit off`` (the generator reads and emits the 3 base codes only; a tuple several items share
expands to them, most popular in training first).

Decode-time lever ``--pop-correction`` (no retraining; rows saved by this version keep their candidates): each row
gets a ``+pop-correction`` twin re-ranked by ``benchmarks/genrec_rerank.py``.
"""

from __future__ import annotations

import argparse
import gc
import os
import pickle
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

# idle OpenMP threads sleep instead of spinning, as `semid` sets it (semid.model.training.cpu_threads): must come
# before torch and faiss load their OpenMP runtime
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import MOVIELENS  # noqa: E402
from benchmarks.compare_tokenizers import CODEBOOK, LEVELS, TOKENIZERS, Fitted, _semid  # noqa: E402
from benchmarks.genrec_carry import carried_row  # noqa: E402
from benchmarks.genrec_data import (  # noqa: E402
    IdItems,
    Split,
    _catalog_rows,  # noqa: E402
    example_users,
    leave_one_out,
    next_item_examples,
    popularity,
    random_codes,
    read_histories,
    split_users,
    training_windows,
    unique_ids,
    user_buckets,
)
from benchmarks.genrec_metrics import (  # noqa: E402
    KS,
    by_popularity,
    comparisons,
    held_out_figures,
    recall_at,
    recommended_by_popularity,
    summarise,
)
from benchmarks.genrec_model import (  # noqa: E402
    LR_DECAYS,
    TIGER,
    Budget,
    ItemGenerator,
    SemanticGenerator,
    TigerGenerator,
    beam_search,
    rank_items,
    train,
)
from benchmarks.genrec_published import published_for  # noqa: E402
from benchmarks.genrec_report import write  # noqa: E402
from benchmarks.genrec_rerank import UNCONSTRAINED, log_counts, with_corrected_rows  # noqa: E402
from semid.model.config import TrainConfig  # noqa: E402
from semid.model.data.catalog import read_catalog  # noqa: E402
from semid.model.first_level.coliked import read_coliked  # noqa: E402
from semid.model.training.collab import ppmi_svd  # noqa: E402
from semid.service.evaluation.holdout import split_rows  # noqa: E402
from semid.service.evaluation.interactions import InteractionsError, read_interactions  # noqa: E402

INTERACTIONS_ROW = "semid-rqvae-interactions"
SMALL_SHAPE_ROW = "semid-rqvae-3x64"  # semid defaults but 64 codes a level: an ID shape for a ~4k-item catalog
LETTER_ROW = "semid-rqvae-letter"  # the interactions row + LETTER-style alignment and code diversity
LETTER = {"collab_align": 1.0, "code_diversity": 0.5}
ADAPTIVE_SHAPE_ROW = "semid-rqvae-adaptive"  # semid defaults, codes a level from the catalog size (adaptive_codes)
ADAPTIVE_KMEANS_ROW = "semid-rqkmeans-adaptive"  # semid residual k-means, codes a level from the catalog size
ADAPTIVE_ROWS = {ADAPTIVE_SHAPE_ROW: "rqvae", ADAPTIVE_KMEANS_ROW: "rqkmeans"}
COLLAB_KMEANS_ROW = "semid-rqkmeans-collab"  # semid residual k-means on content + collaborative embeddings
COLLAB_WEIGHT = 0.5  # the collaborative part's length beside the unit content row, before the row is normalised
COLLAB_DIM = 64  # rank of the collaborative embeddings (ppmi_svd)
LIKES_ROWS = (INTERACTIONS_ROW, LETTER_ROW, COLLAB_KMEANS_ROW)  # rows that train on the generator's training pairs
# benchmark name -> compare_tokenizers key (None: random codes, or the interactions row)
SOURCES: dict[str, str | None] = {
    "semid-rqvae": "semid-rqvae",
    "semid-rqvae-noanchors": "semid-rqvae-noanchors",
    "semid-rqvae-anchors-k8": "semid-rqvae-anchors-k8",
    "semid-rqvae-equal-votes": "semid-rqvae-equal-votes",
    "semid-rqvae-plain": "semid-rqvae-plain",
    "semid-rqkmeans": "semid-rqkmeans",
    "semid-rqkmeans-balanced": "semid-rqkmeans-balanced",
    SMALL_SHAPE_ROW: None,  # built per run: semid rqvae with codebook_size 64 (the generator keeps 256 a level)
    INTERACTIONS_ROW: None,  # built per run: it learns from the generator's training interactions only
    LETTER_ROW: None,  # built per run, as the interactions row
    ADAPTIVE_SHAPE_ROW: None,  # built per run: semid rqvae with adaptive_codes(catalog) codes a level
    ADAPTIVE_KMEANS_ROW: None,  # built per run: semid rqkmeans with adaptive_codes(catalog) codes a level
    COLLAB_KMEANS_ROW: None,  # built per run: semid rqkmeans on content_and_collab (the generator's training pairs)
    "faiss-rq": "faiss-rq",
    "faiss-rqkmeans": None,  # residual k-means with faiss.Kmeans, 256 codes a level (FAISS_RQKMEANS)
    "semantic-id": "sid-rqkmeans",
    "random": None,
}
DEFAULT_TOKENIZERS = "semid-rqvae,semid-rqkmeans,faiss-rq,faiss-rqkmeans,semantic-id,random"
ITEM_BASELINE, POPULARITY = "item-id (SASRec-style)", "popularity"
ITEM_EPOCHS = 200  # the item-id model's default epoch cap (--item-epochs)
WIDE = "wide_beams"  # a run's decodes with --wide-beams (the same model, a wider constrained beam)


@dataclass(frozen=True)
class Settings:
    generator: str = "small"  # "small" (decoder-only) or "tiger" (encoder-decoder, TIGER's sizes)
    val_users: int | None = 1000  # validation users early stopping scores (a fixed seeded sample; None: all)
    item_lrs: tuple = (1e-3, 3e-3)  # the item-id baseline's grid, chosen on validation Recall@10
    item_dropouts: tuple = (0.2, 0.5)
    history: int = 20  # items of history the generator sees
    train_items: int | None = None  # each user's most recent training items the generators learn from
    beams: int = 20
    eval_batch: int = 16  # users per beam-search batch
    min_rating: float | None = None
    max_users: int | None = None
    valid: bool = False  # also decode the validation targets
    user_token: int = 0  # tiger: buckets of the user token prepended to the encoder input (0: none)
    dedup_digit: bool = True  # False: the generator learns and emits the 3 base codes only


# generator levers: a row's signature leaves them out at their defaults, so rows saved before they existed match
LEVER_DEFAULTS = {"user_token": 0, "dedup_digit": True}


# ---------------------------------------------------------------------------------------------- IDs


def faiss_rqkmeans(raw: np.ndarray, x: np.ndarray, seed: int, fit: np.ndarray) -> Fitted:
    """Residual k-means with ``faiss.Kmeans`` (LEVELS levels of CODEBOOK centroids, 20 iterations each):
    the plain RQ-KMeans baseline (as GRID's and OneRec's tokenizers)."""
    start = time.perf_counter()
    residual, centroids = np.ascontiguousarray(x[fit]), []
    for level in range(LEVELS):
        km = faiss.Kmeans(x.shape[1], CODEBOOK, niter=20, seed=seed * 100 + level, verbose=False)
        km.train(residual)
        centroids.append(km.centroids.copy())
        _, assign = km.index.search(residual, 1)
        residual = np.ascontiguousarray(residual - km.centroids[assign[:, 0]])
    fit_s = time.perf_counter() - start
    rest, codes = np.ascontiguousarray(x), []
    for c in centroids:
        index = faiss.IndexFlatL2(c.shape[1])
        index.add(c)
        _, assign = index.search(rest, 1)
        codes.append(assign[:, 0])
        rest = np.ascontiguousarray(rest - c[assign[:, 0]])
    settings = {"call": f"faiss.Kmeans(d, {CODEBOOK}, niter=20) x {LEVELS} levels on residuals"}
    return Fitted(np.stack(codes, axis=1).astype(np.int64), fit_s, 0.0, x - rest, settings)


def content_and_collab(
    x: np.ndarray, item_ids: np.ndarray, likes: Path, seed: int, weight: float = COLLAB_WEIGHT
) -> tuple[np.ndarray, dict]:
    """float32 [N, d + COLLAB_DIM]: each unit content row ``x`` followed by ``weight`` x its unit collaborative
    embedding (``ppmi_svd`` of the likes in ``likes``, the generator's training pairs; zeros for an item nobody
    liked alongside another), and facts about them. semid's l2 input normalisation then gives the two parts equal
    length for every item with likes at weight 1; at 0.5 the content part weighs twice the other."""
    graph = read_coliked(likes, item_ids, TrainConfig())
    assert graph.liked is not None
    emb = ppmi_svd(graph.liked[:, 0], graph.liked[:, 1], x.shape[0], COLLAB_DIM, seed)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    unit = np.divide(emb, norms, out=np.zeros_like(emb), where=norms > 0)
    fused = np.concatenate([x, weight * unit], axis=1).astype(np.float32)
    facts = {"collab_items": int((norms[:, 0] > 0).sum()), "collab_dim": COLLAB_DIM, "collab_weight": weight}
    return fused, facts


def adaptive_codes(items: int) -> int:
    """Codes a level for a catalog of ``items``: the power of two nearest 2 * sqrt(items), between 16 and
    CODEBOOK. Then the first level holds about K / 4 items a code, which the second level's K codes can still
    split, where 256 codes over a ~4k-item catalog leave most second- and third-level codes empty."""
    return int(min(CODEBOOK, max(16, 2 ** round(np.log2(2 * np.sqrt(items))))))


def fit_ids(
    name: str,
    raw: np.ndarray,
    x: np.ndarray,
    item_ids: np.ndarray,
    seed: int,
    fit: np.ndarray | None = None,
    likes: Path | None = None,
    collab_weight: float = COLLAB_WEIGHT,
) -> tuple[np.ndarray, dict]:
    """Unique [N, LEVELS + 1] IDs of one tokenizer and facts about them; the tokenizer is fitted on the rows
    ``fit`` (default: the whole catalog) and encodes every item. ``likes``: the interactions file the
    interactions row trains with (``training_interactions``); ``collab_weight``: the collaborative row's weight."""
    source = SOURCES[name]
    space = x  # where the reconstruction lives (the dedup digit orders an ID's items by distance in it)
    if name == INTERACTIONS_ROW:
        runner = _semid("rqvae", coliked=lambda rows: read_coliked(likes, item_ids[rows], TrainConfig()))
        fitted = runner(raw, x, seed, np.arange(len(raw)) if fit is None else fit)
    elif name == LETTER_ROW:
        runner = _semid("rqvae", coliked=lambda rows: read_coliked(likes, item_ids[rows], TrainConfig()), **LETTER)
        fitted = runner(raw, x, seed, np.arange(len(raw)) if fit is None else fit)
    elif name == COLLAB_KMEANS_ROW:
        assert likes is not None
        fused, facts = content_and_collab(x, item_ids, likes, seed, collab_weight)
        fitted = _semid("rqkmeans")(fused, fused, seed, np.arange(len(raw)) if fit is None else fit)
        fitted.settings.update(facts)
        space = fused / np.linalg.norm(fused, axis=1, keepdims=True)  # the dedup digit's distances: fused space
    elif name in ADAPTIVE_ROWS:
        rows = np.arange(len(raw)) if fit is None else fit
        fitted = _semid(ADAPTIVE_ROWS[name], {"codebook_size": adaptive_codes(len(rows))})(raw, x, seed, rows)
    elif name == SMALL_SHAPE_ROW:
        fitted = _semid("rqvae", {"codebook_size": 64})(raw, x, seed, np.arange(len(raw)) if fit is None else fit)
    elif name == "faiss-rqkmeans":
        fitted = faiss_rqkmeans(raw, x, seed, np.arange(len(raw)) if fit is None else fit)
    elif source is None:
        fitted = Fitted(random_codes(len(raw), LEVELS, CODEBOOK, seed), 0.0, 0.0, None, {"codes": "uniform random"})
    else:
        fitted = TOKENIZERS[source][1](raw, x, seed, np.arange(len(raw)) if fit is None else fit)
    codes = fitted.codes
    if fitted.reconstruction is not None:
        distances = np.linalg.norm(space - fitted.reconstruction.astype(np.float32), axis=1)
    else:
        distances = np.zeros(len(codes))
    sids = unique_ids(codes, distances, item_ids, CODEBOOK)
    buckets = np.unique(codes, axis=0).shape[0]
    info = {
        "tokenizer": TOKENIZERS[source][0] if source else _unsourced_label(name),
        "fit_s": round(fitted.fit_s, 2),
        "base_collision_rate": round(1 - buckets / len(codes), 5),
        "max_dedup_digit": int(sids[:, -1].max()),
        "settings": fitted.settings,
    }
    return sids, info


# ---------------------------------------------------------------------------------------------- evaluation


def _by_length(split: Split, part: str, cap: int, batch: int) -> list[np.ndarray]:
    """Users grouped by history length (a batch needs one length), in batches."""
    lengths = np.array([split.history(u, part, cap).shape[0] for u in range(len(split.train))])
    out = []
    for length in np.unique(lengths):
        users = np.flatnonzero(lengths == length)
        out += [users[s : s + batch] for s in range(0, users.shape[0], batch)]
    return out


def _histories(split: Split, users: np.ndarray, part: str, cap: int) -> np.ndarray:
    return np.stack([split.history(int(u), part, cap) for u in users])


def decode_semantic(
    model, sids: np.ndarray, id_items: IdItems, split: Split, part: str, s: Settings, free: bool = True
) -> dict:
    """Constrained and (with ``free``) unconstrained beam search for every user: top-k item rows, validity,
    timings. ``sids``: every item's ID as the generator spells it; ``id_items`` maps IDs back to items (an ID
    several items share expands to all of them, most popular first). With ``s.user_token`` the generator gets
    each user's bucket."""
    users = len(split.train)
    trie = id_items.trie
    buckets = torch.from_numpy(user_buckets(split.user_names(), s.user_token)) if s.user_token else None
    top = max(KS)
    lists = np.full((users, top), -1, dtype=np.int64)
    free_lists = np.full((users, top), -1, dtype=np.int64)
    cand_items = np.full((users, s.beams), -1, dtype=np.int64)
    cand_scores = np.full((users, s.beams), -np.inf, dtype=np.float32)
    emitted, invalid_free, invalid_free_top1, beams_free = [], 0, 0, 0
    constrained_s = free_s = 0.0
    for batch in _by_length(split, part, s.history, s.eval_batch):
        history = torch.from_numpy(sids[_histories(split, batch, part, s.history)])
        users_of = None if buckets is None else buckets[batch]
        start = time.perf_counter()
        ids, score = beam_search(model, history, s.beams, trie, users_of)
        constrained_s += time.perf_counter() - start
        for row, user in enumerate(batch):
            finite = np.isfinite(score[row])
            live = ids[row][finite]
            items, values = id_items.expand_scored(id_items.positions(live), score[row][finite], s.beams)
            emitted.append(live)
            lists[user, : min(top, items.shape[0])] = items[:top]
            cand_items[user, : items.shape[0]], cand_scores[user, : items.shape[0]] = items, values
        if not free:
            continue
        start = time.perf_counter()
        free_ids, _ = beam_search(model, history, s.beams, None, users_of)
        free_s += time.perf_counter() - start
        pos = id_items.positions(free_ids.reshape(-1, free_ids.shape[2])).reshape(free_ids.shape[:2])  # -1: none
        invalid_free += int((pos < 0).sum())
        invalid_free_top1 += int((pos[:, 0] < 0).sum())
        beams_free += pos.size
        for row, user in enumerate(batch):
            valid = id_items.expand(pos[row], top)
            free_lists[user, : valid.shape[0]] = valid
    return {
        "lists": lists,
        "candidates": {"items": cand_items, "scores": cand_scores},
        "free_lists": free_lists,
        "emitted": np.concatenate(emitted) if emitted else np.zeros((0, sids.shape[1]), np.int64),
        "invalid_rate_unconstrained": round(invalid_free / max(beams_free, 1), 4),
        "invalid_top1_unconstrained": round(invalid_free_top1 / max(users, 1), 4),
        "decode_ms_per_user": round(1000 * constrained_s / max(users, 1), 2),
        "decode_ms_per_user_unconstrained": round(1000 * free_s / max(users, 1), 2),
    }


def decode_items(model: ItemGenerator, split: Split, part: str, s: Settings) -> dict:
    """The item-id model's top-k lists, and its top ``max(k, s.beams)`` items with their log-probabilities
    (the candidates ``--pop-correction`` re-ranks: as many as the generators' beams, and never fewer than k)."""
    users, top = len(split.train), max(KS)
    wide = max(top, s.beams)
    items = np.full((users, wide), -1, dtype=np.int64)
    scores = np.full((users, wide), -np.inf, dtype=np.float32)
    spent = 0.0
    for batch in _by_length(split, part, s.history, s.eval_batch):
        history = torch.from_numpy(_histories(split, batch, part, s.history))
        start = time.perf_counter()
        found, logp = rank_items(model, history, wide)
        items[batch, : found.shape[1]], scores[batch, : found.shape[1]] = found, logp
        spent += time.perf_counter() - start
    return {
        "lists": np.ascontiguousarray(items[:, :top]),
        "candidates": {"items": items, "scores": scores},
        "decode_ms_per_user": round(1000 * spent / max(users, 1), 2),
    }


def with_wide_beam_rows(rows: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """``rows`` with a ``<label> +beams N`` row right after every row whose runs were all also decoded with
    ``--wide-beams N``: the same trained models, every part's lists from the wider beam (a paired comparison
    of the beam width alone)."""
    out: dict[str, list[dict]] = {}
    for label, runs in rows.items():
        out[label] = runs
        wide = [r.get(WIDE) for r in runs]
        beams = {w.get("beams") for w in wide if w is not None}
        if runs and all(w is not None for w in wide) and len(beams) == 1:
            twins = [{**{k: v for k, v in r.items() if k != WIDE}, **w} for r, w in zip(runs, wide, strict=True)]
            out[f"{label} +beams {beams.pop()}"] = twins
    return out


def tune_candidates(decoded: dict, val: Split) -> dict:
    """The validation users' candidates and targets: what ``--pop-correction`` chooses its alpha on."""
    return {**decoded["candidates"], "target": val.valid_target}


def popularity_lists(split: Split, items: int) -> np.ndarray:
    counts = popularity(split, items)
    top = np.argsort(-counts, kind="stable")[: max(KS)]
    return np.broadcast_to(top, (len(split.train), top.shape[0]))


# ---------------------------------------------------------------------------------------------- one run


def recent(split: Split, s: Settings) -> list[np.ndarray]:
    """Each user's most recent ``s.train_items`` training items (all with None)."""
    return [t[-s.train_items :] for t in split.train] if s.train_items else split.train


def valid_users(split: Split, s: Settings) -> np.ndarray:
    """The users early stopping scores: a fixed seeded sample of ``s.val_users`` (all when None or fewer)."""
    n = len(split.train)
    if s.val_users is None or s.val_users >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng([0, 5]).choice(n, s.val_users, replace=False))


def subset(split: Split, users: np.ndarray) -> Split:
    return Split(
        train=[split.train[int(u)] for u in users],
        valid_target=split.valid_target[users],
        test_target=split.test_target[users],
        users=split.user_names()[users],
    )


def _gather(sids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Item rows [...] (-1: padding) -> their ID codes [..., W] (-1 rows for padding)."""
    return torch.where(rows[..., None] >= 0, sids[rows.clamp(min=0)], -1)


def run_semantic(
    name: str,
    sids: np.ndarray,
    split: Split,
    budget: Budget,
    s: Settings,
    parts: list[str],
    log=print,
    wide_beams: int = 0,
) -> dict:
    """Train one generator on a tokenizer's IDs (early stopping on the validation users' Recall@10) and
    decode every part; per-part ranks and figures. ``s.dedup_digit`` False: the generator reads and emits
    the 3 base codes only (``generator_ids``). ``wide_beams``: also decode every part with that many beams
    (constrained only), kept under ``WIDE`` for the ``+beams N`` twin row (``with_wide_beam_rows``)."""
    torch.manual_seed(budget.seed)
    sids = generator_ids(sids, s)
    width = sids.shape[1]
    id_items = IdItems.build(sids, popularity(split, len(sids)), (CODEBOOK,) * width)
    codes = torch.from_numpy(sids)
    if s.generator == "tiger":
        train_seqs = recent(split, s)
        hist, target = next_item_examples(train_seqs, s.history)
        hist_t, target_t = torch.from_numpy(hist), torch.from_numpy(target)
        model = TigerGenerator(width, CODEBOOK, s.history, budget, user_buckets=s.user_token)
        users_t = None
        if s.user_token:
            users_t = torch.from_numpy(user_buckets(split.user_names(), s.user_token)[example_users(train_seqs)])

        lengths = (hist_t >= 0).sum(dim=1)

        def loss_of(idx: torch.Tensor) -> torch.Tensor:
            longest = max(1, int(lengths[idx].max()))  # left-padded: keep the last `longest` columns
            users = None if users_t is None else users_t[idx]
            return model.loss(_gather(codes, hist_t[idx, -longest:]), codes[target_t[idx]], users)

        examples = int(target.shape[0])
    else:
        windows, learn = training_windows(recent(split, s), s.history + 1)
        windows_t, learn_t = torch.from_numpy(windows), torch.from_numpy(learn)
        model = SemanticGenerator(width, CODEBOOK, s.history + 1, budget)

        lengths = (windows_t >= 0).sum(dim=1)

        def loss_of(idx: torch.Tensor) -> torch.Tensor:
            longest = max(2, int(lengths[idx].max()))  # right-padded: keep the first `longest` columns
            return model.loss(_gather(codes, windows_t[idx, :longest]), learn_t[idx, :longest])

        examples = int(windows.shape[0])
    val = subset(split, valid_users(split, s))

    def evaluate() -> float:
        lists = decode_semantic(model, sids, id_items, val, "valid", s, free=False)["lists"]
        return recall_at(lists, val.valid_target)

    log(f"  [{name}] {s.generator} generator, training on {examples} examples")
    trained = train(model, examples, loss_of, budget, evaluate, log, label=name, lengths=lengths)
    out: dict[str, Any] = {"train": trained, "parameters": sum(p.numel() for p in model.parameters())}
    out["tune"] = tune_candidates(decode_semantic(model, sids, id_items, val, "valid", s, free=False), val)
    for part in parts:
        decoded = decode_semantic(model, sids, id_items, split, part, s)
        out[part] = decoded
        log(f"  [{name}] {part}: decoded, unconstrained invalid rate {decoded['invalid_rate_unconstrained']}")
    if wide_beams:  # the same model decoded again with a wider constrained beam (--wide-beams)
        wide = replace(s, beams=wide_beams)
        out[WIDE] = {"beams": wide_beams}
        for part in parts:
            decoded = decode_semantic(model, sids, id_items, split, part, wide, free=False)
            out[WIDE][part] = {k: v for k, v in decoded.items() if k not in (*UNCONSTRAINED, "emitted")}
    return out


def generator_ids(sids: np.ndarray, s: Settings) -> np.ndarray:
    """The IDs the generator reads and emits: the full unique IDs, or (``--dedup-digit off``) their 3 base
    codes, which several items may share."""
    return sids if s.dedup_digit else np.ascontiguousarray(sids[:, :LEVELS])


def item_budget(budget: Budget, epochs: int = ITEM_EPOCHS) -> Budget:
    """SASRec's usual shape (width 64, 2 layers, batches of 128 windows) with the run's stopping rule and its
    own epoch cap (``--item-epochs``: a small model over few windows needs far more epochs than the generator)."""
    return replace(
        Budget(),
        epochs=epochs,
        patience=budget.patience,
        min_epochs=budget.min_epochs,
        eval_every=budget.eval_every,
        seed=budget.seed,
        budget_s=budget.budget_s,
        lr_decay=budget.lr_decay,
    )


def run_items(
    split: Split, items: int, budget: Budget, s: Settings, parts: list[str], log=print, epochs: int = ITEM_EPOCHS
) -> dict:
    """The item-id baseline: one early-stopped model per (lr, dropout) of the grid; the one with the best
    validation Recall@10 is scored."""
    windows, learn = training_windows(recent(split, s), s.history + 1)
    windows_t, learn_t = torch.from_numpy(windows), torch.from_numpy(learn)
    val = subset(split, valid_users(split, s))
    grid, best = [], None
    for lr in s.item_lrs:
        for dropout in s.item_dropouts:
            b = replace(item_budget(budget, epochs), lr=lr, dropout=dropout)
            torch.manual_seed(budget.seed)
            model = ItemGenerator(items, s.history + 1, b)

            def evaluate(model=model) -> float:
                lists = decode_items(model, val, "valid", s)["lists"]
                return recall_at(lists, val.valid_target)

            log(f"  [{ITEM_BASELINE}] lr {lr} dropout {dropout}: training on {len(windows)} windows")
            trained = train(
                model,
                len(windows),
                lambda idx, m=model: m.loss(windows_t[idx], learn_t[idx]),
                b,
                evaluate,
                log,
                label=f"item-id lr {lr} dropout {dropout}",
            )
            grid.append({"lr": lr, "dropout": dropout, **trained})
            if best is None or trained["best_valid_recall10"] > best[1]["best_valid_recall10"]:
                best = (model, trained, b)
    model, trained, b = best
    trained = {
        **trained,
        "train_s": round(sum(g["train_s"] for g in grid), 2),
        "chosen": {"lr": b.lr, "dropout": b.dropout},
        "grid": grid,
    }
    out: dict[str, Any] = {"train": trained, "parameters": sum(p.numel() for p in model.parameters())}
    out["tune"] = tune_candidates(decode_items(model, val, "valid", s), val)
    for part in parts:
        out[part] = decode_items(model, split, part, s)
    return out


# ---------------------------------------------------------------------------------------------- summary


def _unsourced_label(name: str) -> str:
    if name == SMALL_SHAPE_ROW:
        return "semid rqvae, 3 x 64 codes (IDs in the generator's 256-code vocabulary)"
    if name == LETTER_ROW:
        return f"semid rqvae + interactions + LETTER-style terms {LETTER}"
    if name == COLLAB_KMEANS_ROW:
        return f"semid rqkmeans on content + collaborative (PPMI-SVD) embeddings, weight {COLLAB_WEIGHT}"
    if name in ADAPTIVE_ROWS:
        kind = ADAPTIVE_ROWS[name]
        return f"semid {kind}, 3 x adaptive_codes(catalog) codes (IDs in the generator's 256-code vocabulary)"
    return "semid rqvae + interactions (the generator's training pairs)" if name == INTERACTIONS_ROW else "random codes"


def training_interactions(path: str, item_ids: np.ndarray, hist_users: np.ndarray, split: Split, out: Path) -> Path:
    """The interactions file without each evaluated user's validation and test items, for the tokenizer that
    learns from co-liked pairs: it must not see the pairs the generator is scored on. ``hist_users``: the
    split's users as ``read_histories`` numbers them (sorted distinct user names among catalog interactions)."""
    table, _ = read_interactions(path)
    users = np.asarray(table.column("user").to_numpy(zero_copy_only=False)).astype(str)
    rows = _catalog_rows(item_ids, np.asarray(table.column("item").to_numpy(zero_copy_only=False)))
    names, numbers = np.unique(users[rows >= 0], return_inverse=True)
    user_of = np.full(users.shape[0], -1, dtype=np.int64)
    user_of[rows >= 0] = numbers
    n = len(item_ids)
    held = np.concatenate([hist_users * n + split.valid_target, hist_users * n + split.test_target])
    drop = np.isin(user_of * n + rows, held) & (rows >= 0)
    keep = pa.table(
        {
            "user": pa.array(users[~drop]),
            "item": table.column("item").filter(pa.array(~drop)),
            "rating": table.column("rating").filter(pa.array(~drop)),
        }
    )
    target = out / "tokenizer_interactions.parquet"
    pq.write_table(keep, target)
    print(f"tokenizer interactions: {keep.num_rows} of {table.num_rows} rows ({int(drop.sum())} held out)")
    return target


# ---------------------------------------------------------------------------------------------- main


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", default=str(MOVIELENS), help="Parquet/.npy catalog (default: MovieLens small)")
    ap.add_argument("--interactions", required=True, help="interactions CSV/Parquet (user, item, time/order)")
    ap.add_argument("--user-col", default=None, help="user column (default: detected by name)")
    ap.add_argument("--item-col", default=None, help="item column (default: detected by name)")
    ap.add_argument("--time-col", default=None, help="time or position column (default: detected; none: file order)")
    ap.add_argument("--out", required=True, help="directory for the results files")
    ap.add_argument("--tokenizers", default=DEFAULT_TOKENIZERS, help=f"comma-separated subset of {list(SOURCES)}")
    ap.add_argument("--no-item-baseline", action="store_true", help="skip the item-id model (e.g. another process)")
    ap.add_argument(
        "--generator",
        choices=("small", "tiger"),
        default="small",
        help="small: decoder-only (width 64, 2 layers); tiger: TIGER's encoder-decoder",
    )
    ap.add_argument("--seeds", default="0", help="the seeds to run, a comma list, e.g. 0,1,2")
    ap.add_argument(
        "--epochs",
        "--max-epochs",
        dest="epochs",
        type=int,
        default=None,
        help="most epochs (default: 8 small, 60 tiger); early stopping usually stops sooner",
    )
    ap.add_argument("--item-epochs", type=int, default=ITEM_EPOCHS, help="most epochs of the item-id model")
    ap.add_argument(
        "--lr-decay",
        choices=LR_DECAYS,
        default="constant",
        help="the learning rate after the first epoch's warm-up, for every model: constant, or a cosine decay to 0 "
        "at the last of --epochs (the item-id model: of --item-epochs)",
    )
    ap.add_argument("--patience", type=int, default=Budget.patience, help="evaluations without improvement")
    ap.add_argument(
        "--min-epochs",
        type=int,
        default=0,
        help="patience cannot stop a model before this epoch (a plateau in the first epochs stops none)",
    )
    ap.add_argument("--eval-every", type=int, default=Budget.eval_every, help="epochs between validation scores")
    ap.add_argument(
        "--val-users",
        type=val_users_of,
        default=argparse.SUPPRESS,  # absent unless given, so that --tiny can tell "not given" from 1000
        help=f"validation users early stopping scores (a fixed seeded sample), or 'all' (default {Settings.val_users})",
    )
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--dropout", type=float, default=None)
    ap.add_argument("--width", type=int, default=None, help="d_model")
    ap.add_argument("--layers", type=int, default=None, help="layers (per side for tiger)")
    ap.add_argument("--heads", type=int, default=None)
    ap.add_argument("--ff", type=int, default=None, help="feed-forward width (tiger)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--history", type=int, default=Settings.history)
    ap.add_argument("--beams", type=int, default=Settings.beams)
    ap.add_argument(
        "--wide-beams",
        type=int,
        default=0,
        help="decode-time lever: also decode each semantic-ID model with this many beams; the report adds its "
        "'+beams N' row from the same trained models (not part of the row signature)",
    )
    ap.add_argument("--train-items", type=int, default=0, help="learn from each user's N most recent training items")
    ap.add_argument("--min-rating", type=float, default=None, help="keep ratings >= this (default: every rating)")
    ap.add_argument("--max-users", type=int, default=None)
    ap.add_argument(
        "--budget-minutes",
        type=float,
        default=None,
        help="stop each model's training after this many CPU-minutes of this process (quick runs)",
    )
    ap.add_argument("--valid", action="store_true", help="also decode the validation targets")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch/faiss threads (1: on a shared machine 2 threads run far slower)"
    )
    ap.add_argument(
        "--user-token",
        type=int,
        default=0,
        metavar="N",
        help="tiger: prepend a user token (the user's name hashed into N buckets) to the encoder input; 0: none",
    )
    ap.add_argument(
        "--dedup-digit",
        choices=("on", "off"),
        default="on",
        help="off: the generator learns and emits only the 3 base codes; a decoded code tuple several items "
        "share stands for all of them, most popular in training first",
    )
    ap.add_argument(
        "--compare-to",
        default=None,
        metavar="DIRS",
        help="comma-separated --rows-dir directories of runs with other generator levers or another training "
        "length or stopping (--epochs, --min-epochs, --patience, --val-users, --budget-minutes) on the same data, "
        "model and settings: their "
        "rows join the table, labelled, and the paired comparisons (paired by user)",
    )
    ap.add_argument(
        "--pop-correction",
        action="store_true",
        help="also report each row re-ranked at decode time by log p(item) - alpha * log(1 + training count), "
        "alpha chosen per model on the validation users (benchmarks/genrec_rerank.py); rows saved before "
        "candidates were kept get none",
    )
    ap.add_argument("--tiny", action="store_true", help="smoke run: 2 epochs, 40 users, history 5, 5 beams")
    ap.add_argument("--name", default=None, help="results file name (default generative_retrieval[_holdout])")
    ap.add_argument("--rows-dir", default=None, help="where each finished row is kept (default OUT/NAME_rows)")
    ap.add_argument("--reuse", action="store_true", help="load rows already in --rows-dir with the same settings")
    ap.add_argument(
        "--merge-only", action="store_true", help="only report the rows already in --rows-dir (train nothing)"
    )
    ap.add_argument(
        "--carry-from",
        default=None,
        metavar="DIRS",
        help="comma-separated --rows-dir directories of the same run with another --min-epochs: a row there whose "
        "training patience did not stop before this run's --min-epochs (its validation curve replayed) is this "
        "run's row and is saved to --rows-dir instead of training it again (benchmarks/genrec_carry.py)",
    )
    ap.add_argument(
        "--holdout-share",
        type=float,
        default=None,
        help="fit every tokenizer on a seeded 1-S of the items (new items: the rest) and also report the users "
        "whose test item is held out; writes generative_retrieval_holdout.{json,md}",
    )
    args = ap.parse_args(argv)
    args.val_users_given = "val_users" in vars(args)
    if not args.val_users_given:
        args.val_users = Settings.val_users
    return args


def val_users_of(text: str) -> int | None:
    """``--val-users``: a positive count, or ``all`` (None: every user; a count above the users is all too)."""
    if text.strip().lower() == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number or 'all', got {text!r}")
    return value


def seeds_of(text: str) -> list[int]:
    """``--seeds``: the seeds to run, e.g. ``0`` or ``0,1,2``."""
    try:
        seeds = [int(v) for v in text.split(",") if v.strip()]
        if not seeds:
            raise ValueError
        return seeds
    except ValueError:
        raise SystemExit(f"error: --seeds must be N or a comma list of integers, not {text!r}") from None


def settings_of(args: argparse.Namespace) -> tuple[Budget, Settings]:
    base = replace(Budget(), **TIGER) if args.generator == "tiger" else Budget()
    given = {
        "epochs": args.epochs,
        "lr": args.lr,
        "dropout": args.dropout,
        "width": args.width,
        "layers": args.layers,
        "heads": args.heads,
        "ff": args.ff,
        "batch_size": args.batch_size,
    }
    budget = replace(base, **{k: v for k, v in given.items() if v is not None})
    budget = replace(
        budget,
        patience=args.patience,
        min_epochs=args.min_epochs,
        eval_every=args.eval_every,
        budget_s=None if args.budget_minutes is None else 60 * args.budget_minutes,
        lr_decay=args.lr_decay,
    )
    s = Settings(
        generator=args.generator,
        val_users=args.val_users,
        history=args.history,
        train_items=args.train_items or None,
        beams=args.beams,
        min_rating=args.min_rating,
        max_users=args.max_users,
        valid=args.valid,
        user_token=args.user_token,
        dedup_digit=args.dedup_digit == "on",
    )
    if args.tiny:
        small = {"epochs": 2, "width": 32, "layers": 1, "heads": 2, "ff": 64, "d_kv": 16, "patience": 2}
        budget = replace(budget, **{k: v for k, v in small.items() if given.get(k) is None})
        val = args.val_users if args.val_users_given else 20
        s = replace(
            s, history=5, beams=5, max_users=args.max_users or 40, val_users=val, item_lrs=(3e-3,), item_dropouts=(0.2,)
        )
    return budget, s


def check_levers(args: argparse.Namespace) -> None:
    if args.min_epochs < 0:
        raise SystemExit(f"error: --min-epochs must be 0 (patience may stop any epoch) or more, not {args.min_epochs}")
    if args.wide_beams < 0:
        raise SystemExit(f"error: --wide-beams must be 0 (off) or a number of beams, not {args.wide_beams}")
    if args.user_token < 0:
        raise SystemExit(f"error: --user-token must be 0 (none) or a number of buckets, not {args.user_token}")
    if args.user_token and args.generator != "tiger":
        raise SystemExit("error: --user-token needs --generator tiger")


def signature_settings(s: Settings) -> dict:
    """``asdict(s)`` without the generator levers left at their defaults (rows saved before them match)."""
    return {k: v for k, v in asdict(s).items() if not (k in LEVER_DEFAULTS and v == LEVER_DEFAULTS[k])}


def row_label(name: str, settings: dict) -> str:
    """A row's name in the table: the ID scheme plus the generator levers that differ from the defaults."""
    levers = {**LEVER_DEFAULTS, **{k: v for k, v in settings.items() if k in LEVER_DEFAULTS}}
    parts = [f"+user-token {levers['user_token']}"] if levers["user_token"] else []
    parts += [] if levers["dedup_digit"] else ["-dedup-digit"]
    return " ".join([name, *parts])


def budget_signature(budget: Budget) -> dict:
    """The budget as saved rows are matched on: without the seed, and without ``min_epochs`` at 0 or
    ``lr_decay`` constant (rows saved before they existed match)."""
    out = asdict(replace(budget, seed=0))
    if not out["min_epochs"]:
        del out["min_epochs"]
    if out["lr_decay"] == "constant":
        del out["lr_decay"]
    return out


# how long a model trains, at what rate, and what stops it: a compared row may differ in these (its label says
# how); its data, model and test users may not
STOPPING = ("epochs", "min_epochs", "patience", "budget_s", "lr_decay")
STOPPING_SETTINGS = ("val_users",)
STOPPING_TOP = ("item_epochs",)  # signature keys outside budget and settings (present when not the default)


def _without_levers(signature: dict) -> dict:
    """The signature without the generator levers and the training length and stopping (``STOPPING``,
    ``STOPPING_SETTINGS``): what a compared row must share."""
    dropped = (*LEVER_DEFAULTS, *STOPPING_SETTINGS)
    settings = {k: v for k, v in signature["settings"].items() if k not in dropped}
    budget = {k: v for k, v in signature["budget"].items() if k not in STOPPING}
    rest = {k: v for k, v in signature.items() if k not in STOPPING_TOP}
    return {**rest, "settings": settings, "budget": budget}


def compared_label(name: str, theirs: dict, signature: dict) -> str:
    """A compared row's label: its levers, and how its training length and stopping differ from this run's (its
    epoch cap, ``--min-epochs``, patience, validation users, time cap: a slower machine needs a larger time cap to
    reach the same epoch cap; the row's own stopping is in the report)."""
    label = row_label(name, theirs["settings"])
    mine, its = signature["budget"], theirs["budget"]
    if name == ITEM_BASELINE:  # its own epoch cap
        mine = {**mine, "epochs": signature.get("item_epochs", ITEM_EPOCHS)}
        its = {**its, "epochs": theirs.get("item_epochs", ITEM_EPOCHS)}
    if its.get("epochs") != mine.get("epochs"):
        label += f" (max {its.get('epochs')} epochs)"
    if its.get("min_epochs", 0) != mine.get("min_epochs", 0):
        label += f" (min {its.get('min_epochs', 0)} epochs)"
    if its.get("patience") != mine.get("patience"):
        label += f" (patience {its.get('patience')})"
    val_users = theirs["settings"].get("val_users")
    if val_users != signature["settings"].get("val_users"):
        label += f" (valid {val_users} users)" if val_users else " (valid every user)"
    cap = its.get("budget_s")
    if cap != mine.get("budget_s"):
        label += f" (cap {cap / 60:g} CPU-min)" if cap else " (no time cap)"
    decay = its.get("lr_decay", "constant")
    if decay != mine.get("lr_decay", "constant"):
        label += f" ({decay} lr)"
    return label


def compared_rows(
    dirs: str, signature: dict, seeds: list[int], have: set[str], tokenizers: list[str]
) -> dict[str, list[dict]]:
    """Rows of this run's ``tokenizers`` saved in other ``--rows-dir`` directories (``--compare-to``) whose
    data, users and model are this run's and whose generator levers or training length differ, by their label; the
    same users in the same order, so their per-user figures pair with this run's."""
    out: dict[str, list[dict]] = {}
    for d in [p for p in dirs.split(",") if p.strip()]:
        folder = Path(d.strip())
        if not folder.is_dir():
            raise SystemExit(f"error: --compare-to {folder} is not a directory")
        for path in sorted(folder.glob("*.seed*.pkl")):
            name, _, seed = path.name[: -len(".pkl")].rpartition(".seed")
            name = ITEM_BASELINE if name == "item-id" else name
            if name not in tokenizers or not seed.isdigit() or int(seed) not in seeds:
                continue
            with open(path, "rb") as fh:
                saved = pickle.load(fh)
            theirs = saved.get("signature") or {}
            if not theirs or _without_levers(theirs) != _without_levers(signature):
                print(f"--compare-to: {path} was run on other data or settings; left out", flush=True)
                continue
            label = compared_label(name, theirs, signature)
            if label in have:
                continue
            out.setdefault(label, []).append(saved["run"])
    return out


def _row_file(rows_dir: Path, name: str, seed: int) -> Path:
    safe = "item-id" if name == ITEM_BASELINE else name
    return rows_dir / f"{safe}.seed{seed}.pkl"


def _load_row(path: Path, signature: dict) -> dict | None:
    if not path.is_file():
        return None
    with open(path, "rb") as fh:
        saved = pickle.load(fh)
    return saved["run"] if saved.get("signature") == signature else None


def _carried(dirs: str, name: str, seed: int, signature: dict) -> dict | None:
    """This job's row from a ``--carry-from`` directory, if one there trained as this run would (genrec_carry)."""
    for d in [p.strip() for p in dirs.split(",") if p.strip()]:
        if not Path(d).is_dir():
            raise SystemExit(f"error: --carry-from {d} is not a directory")
        run = carried_row(_row_file(Path(d), name, seed), signature)
        if run is not None:
            return run
    return None


def carried_rows(rows: dict[str, list[dict]]) -> dict[str, dict]:
    """Each row label's carried-over seeds (``--carry-from``, now or by an earlier merge, into --rows-dir or a
    --compare-to dir) and the --min-epochs they came from."""
    out = {}
    for label, runs in rows.items():
        carried = [r for r in runs if r.get("carried_from")]
        if carried:
            out[label] = {
                "seeds": sorted(r["seed"] for r in carried),
                "from_min_epochs": sorted({r["carried_from"]["min_epochs"] for r in carried}),
            }
    return out


def _save_row(path: Path, signature: dict, run: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        pickle.dump({"signature": signature, "run": slim_row(run)}, fh)
    tmp.replace(path)


def slim_row(run: dict) -> dict:
    """The row without what the report never reads: each part's ``emitted`` (every unconstrained beam's
    tokens, most of a full-size row's bytes; the invalid rates computed from it are kept), and with its
    catalog rows (top-k lists, candidates) and every item's ID (``sids``) stored as int32, so that the rows
    of a long run are small enough to keep with its results."""
    return _narrow(
        {k: {n: v for n, v in p.items() if n != "emitted"} if isinstance(p, dict) else p for k, p in run.items()}
    )


def _narrow(value):
    """int64 arrays whose values fit int32 (catalog rows, -1 for none) as int32, inside dicts too."""
    if isinstance(value, dict):
        return {k: _narrow(v) for k, v in value.items()}
    if isinstance(value, np.ndarray) and value.dtype == np.int64 and value.size:
        if value.min() >= np.iinfo(np.int32).min and value.max() <= np.iinfo(np.int32).max:
            return value.astype(np.int32)
    return value


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    check_levers(args)
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    wanted = args.tokenizers.split(",") if args.tokenizers else []
    unknown = [w for w in wanted if w not in SOURCES]
    if unknown:
        raise SystemExit(f"unknown tokenizer(s) {unknown}; choose from {list(SOURCES)}")
    seeds = seeds_of(str(args.seeds))
    item_epochs = 2 if args.tiny else args.item_epochs
    budget, s = settings_of(args)
    parts = ["test", "valid"] if s.valid else ["test"]
    started = time.perf_counter()
    load_start = [round(v, 2) for v in os.getloadavg()]

    cat = read_catalog(args.catalog)
    raw = np.ascontiguousarray(cat.embeddings, dtype=np.float32)
    x = raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)
    try:
        hist = read_histories(
            args.interactions,
            np.asarray(cat.item_ids),
            min_rating=s.min_rating,
            user_column=args.user_col,
            item_column=args.item_col,
            time_column=args.time_col,
        )
        split = leave_one_out(hist, max_users=s.max_users)
    except InteractionsError as err:
        raise SystemExit(f"error: {err}") from None
    fit, held = split_rows(len(raw), args.holdout_share, 0) if args.holdout_share else (None, None)
    likes = None
    if any(row in wanted for row in LIKES_ROWS):
        hist_users = split_users(hist, max_users=s.max_users)
        scratch = Path(tempfile.mkdtemp(prefix="semid-gr-"))
        likes = training_interactions(args.interactions, np.asarray(cat.item_ids), hist_users, split, scratch)
    windows, learn = training_windows(recent(split, s), s.history + 1)
    print(
        f"{len(raw)} items, {len(split.train)} users, {len(windows)} windows, {int(learn.sum())} targets; "
        f"{s.generator} generator, budget {budget}",
        flush=True,
    )

    name = args.name or "generative_retrieval"
    if held is not None and not args.name:
        name += "_holdout"
    rows_dir = Path(args.rows_dir) if args.rows_dir else Path(args.out) / f"{name}_rows"
    signature = {
        "catalog": str(args.catalog),
        "interactions": str(args.interactions),
        "users": len(split.train),
        "budget": budget_signature(budget),
        "settings": signature_settings(s),
        "holdout": args.holdout_share,
        **({"item_epochs": item_epochs} if item_epochs != ITEM_EPOCHS else {}),
    }
    rows: dict[str, list[dict]] = {ITEM_BASELINE: [], POPULARITY: []}
    labels = {n: row_label(n, asdict(s)) for n in wanted}
    labels[ITEM_BASELINE] = ITEM_BASELINE
    rows.update({labels[n]: [] for n in wanted})
    jobs = [(n, seed) for seed in seeds for n in wanted]
    if not args.no_item_baseline:
        jobs += [(ITEM_BASELINE, seed) for seed in seeds]
    for row_name, seed in jobs:
        path = _row_file(rows_dir, row_name, seed)
        run = _load_row(path, signature) if args.reuse or args.merge_only else None
        if run is None and args.carry_from:
            run = _carried(args.carry_from, row_name, seed, signature)
            if run is not None:
                _save_row(path, signature, run)
                print(f"[{row_name}] seed {seed}: carried over from {run['carried_from']['path']}", flush=True)
        if run is None and args.merge_only:
            run = {"status": "not run", "error": f"no saved row {path.name} with these settings"}
            print(f"[{row_name}] seed {seed}: not run (no saved row)", flush=True)
        elif run is None:
            seed_budget = replace(budget, seed=seed)
            row_start, row_load = time.perf_counter(), os.getloadavg()[0]
            if row_name == ITEM_BASELINE:
                run = {"status": "ok", **run_items(split, len(raw), seed_budget, s, parts, epochs=item_epochs)}
            else:
                ids = np.asarray(cat.item_ids)
                run = _run_tokenizer(row_name, raw, x, ids, split, seed_budget, s, parts, fit, likes, args.wide_beams)
            run["wall_s"] = round(time.perf_counter() - row_start, 1)
            run["load"] = [round(row_load, 2), round(os.getloadavg()[0], 2)]
            run["seed"] = seed
            _save_row(path, signature, run)
            gc.collect()
        elif args.reuse or args.merge_only:
            print(f"[{row_name}] seed {seed}: reused {path}", flush=True)
        rows[labels[row_name]].append(run)
    if args.compare_to:
        compared_names = wanted if args.no_item_baseline else [*wanted, ITEM_BASELINE]
        compared = compared_rows(args.compare_to, signature, seeds, set(rows), compared_names)
        for label in compared:  # a scheme this run never ran shows up once, as the compared row
            own = label.split(" ")[0]
            if own in rows and all(r.get("status") == "not run" for r in rows[own]):
                del rows[own]
        rows.update(compared)
    if args.no_item_baseline:
        del rows[ITEM_BASELINE]
    carried = carried_rows(rows)  # before the decode-time twins, which are not rows of their own
    if args.pop_correction:
        rows = with_corrected_rows(rows, log_counts(popularity(split, len(raw))), max(KS))
    if args.wide_beams:
        rows = with_wide_beam_rows(rows)
    rows[POPULARITY].append({"status": "ok", **{p: {"lists": popularity_lists(split, len(raw))} for p in parts}})

    table = summarise(rows, split, parts, seed=0)
    data = {
        "catalog": args.catalog,
        "interactions": args.interactions,
        "items": int(len(raw)),
        "users": len(split.train),
        "windows": int(len(windows)),
        "training_targets": int(learn.sum()),
        "all_training_targets": int(example_users(split.train).shape[0]),  # one per item after a user's first
        "data": hist.info,
        "budget": asdict(budget),
        "item_budget": asdict(item_budget(budget, item_epochs)),
        "settings": asdict(s),
        "seeds": seeds,
        "tiny": args.tiny,
        "load_avg_start": load_start,
        "load_avg_end": [round(v, 2) for v in os.getloadavg()],
        "run_s": round(time.perf_counter() - started, 1),
        "row_wall_s": {n: [r.get("wall_s") for r in runs] for n, runs in rows.items()},
        "published": published_for(args.catalog),
        "carried": carried,
    }
    data["comparisons"] = comparisons(table, "test", seed=0)
    data["by_popularity"] = by_popularity(table, split, len(raw))
    data["by_popularity"]["recommended"] = recommended_by_popularity(rows, split, len(raw))
    if held is not None:
        users, held_comparisons = held_out_figures(table, split, held, seed=0)
        data["holdout"] = {"share": args.holdout_share, "seed": 0, "fit_items": int(fit.shape[0]), "users": users}
        data["holdout"]["comparisons"] = held_comparisons
    path = write(Path(args.out), data, table, name)
    print(path.read_text())
    return {"data": data, "table": table, "rows": rows, "split": split}


def _run_tokenizer(name, raw, x, item_ids, split, budget, s, parts, fit=None, likes=None, wide_beams=0) -> dict:
    print(f"[{name}] seed {budget.seed}: fitting IDs (load {os.getloadavg()[0]:.2f})", flush=True)
    try:
        sids, info = fit_ids(name, raw, x, item_ids, budget.seed, fit, likes)
    except ImportError as err:
        return {"status": "not installed", "error": f"{type(err).__name__}: {err}"}
    except Exception as err:  # one failing tokenizer must not lose the others' figures
        return {"status": "failed", "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
    run = run_semantic(name, sids, split, budget, s, parts, wide_beams=wide_beams)
    return {"status": "ok", "ids": info, "sids": sids, **run}


if __name__ == "__main__":
    main()
