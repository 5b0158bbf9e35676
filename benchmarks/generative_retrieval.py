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
import json
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
from benchmarks.common import MOVIELENS, command, machine  # noqa: E402
from benchmarks.compare_tokenizers import CODEBOOK, LEVELS, TOKENIZERS, Fitted, _semid  # noqa: E402
from benchmarks.genrec_data import (  # noqa: E402
    IdItems,
    Split,
    _catalog_rows,  # noqa: E402
    example_users,
    leave_one_out,
    next_item_examples,
    random_codes,
    read_histories,
    training_windows,
    unique_ids,
    user_buckets,
)
from benchmarks.genrec_model import (  # noqa: E402
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
from benchmarks.genrec_rerank import SUFFIX, log_counts, with_corrected_rows  # noqa: E402
from semid.model.config import TrainConfig  # noqa: E402
from semid.model.data.catalog import read_catalog  # noqa: E402
from semid.model.first_level.coliked import read_coliked  # noqa: E402
from semid.service.evaluation.holdout import split_rows  # noqa: E402
from semid.service.evaluation.interactions import InteractionsError, read_interactions  # noqa: E402

INTERACTIONS_ROW = "semid-rqvae-interactions"
SMALL_SHAPE_ROW = "semid-rqvae-3x64"  # semid defaults but 64 codes a level: an ID shape for a ~4k-item catalog
LETTER_ROW = "semid-rqvae-letter"  # the interactions row + LETTER-style alignment and code diversity
LETTER = {"collab_align": 1.0, "code_diversity": 0.5}
ADAPTIVE_SHAPE_ROW = "semid-rqvae-adaptive"  # semid defaults, codes a level from the catalog size (adaptive_codes)
LIKES_ROWS = (INTERACTIONS_ROW, LETTER_ROW)  # rows that train on the generator's training interactions
# benchmark name -> compare_tokenizers key (None: random codes, or the interactions row)
SOURCES: dict[str, str | None] = {
    "semid-rqvae": "semid-rqvae",
    "semid-rqvae-noanchors": "semid-rqvae-noanchors",
    "semid-rqvae-anchors-k8": "semid-rqvae-anchors-k8",
    "semid-rqvae-equal-votes": "semid-rqvae-equal-votes",
    "semid-rqvae-plain": "semid-rqvae-plain",
    "semid-rqkmeans": "semid-rqkmeans",
    SMALL_SHAPE_ROW: None,  # built per run: semid rqvae with codebook_size 64 (the generator keeps 256 a level)
    INTERACTIONS_ROW: None,  # built per run: it learns from the generator's training interactions only
    LETTER_ROW: None,  # built per run, as the interactions row
    ADAPTIVE_SHAPE_ROW: None,  # built per run: semid rqvae with adaptive_codes(catalog) codes a level
    "faiss-rq": "faiss-rq",
    "faiss-rqkmeans": None,  # residual k-means with faiss.Kmeans, 256 codes a level (FAISS_RQKMEANS)
    "semantic-id": "sid-rqkmeans",
    "random": None,
}
DEFAULT_TOKENIZERS = "semid-rqvae,semid-rqkmeans,faiss-rq,faiss-rqkmeans,semantic-id,random"
ITEM_BASELINE, POPULARITY = "item-id (SASRec-style)", "popularity"
KS = (5, 10)
BOOTSTRAP = 1000


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
) -> tuple[np.ndarray, dict]:
    """Unique [N, LEVELS + 1] IDs of one tokenizer and facts about them; the tokenizer is fitted on the rows
    ``fit`` (default: the whole catalog) and encodes every item. ``likes``: the interactions file the
    interactions row trains with (``training_interactions``)."""
    source = SOURCES[name]
    if name == INTERACTIONS_ROW:
        runner = _semid("rqvae", coliked=lambda rows: read_coliked(likes, item_ids[rows], TrainConfig()))
        fitted = runner(raw, x, seed, np.arange(len(raw)) if fit is None else fit)
    elif name == LETTER_ROW:
        runner = _semid("rqvae", coliked=lambda rows: read_coliked(likes, item_ids[rows], TrainConfig()), **LETTER)
        fitted = runner(raw, x, seed, np.arange(len(raw)) if fit is None else fit)
    elif name == ADAPTIVE_SHAPE_ROW:
        rows = np.arange(len(raw)) if fit is None else fit
        fitted = _semid("rqvae", {"codebook_size": adaptive_codes(len(rows))})(raw, x, seed, rows)
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
        distances = np.linalg.norm(x - fitted.reconstruction.astype(np.float32), axis=1)
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


def ranks_of(target: np.ndarray, lists: np.ndarray) -> np.ndarray:
    """0-based rank of each user's target in its list [U, k] (-1: absent)."""
    hit = lists == target[:, None]
    return np.where(hit.any(axis=1), hit.argmax(axis=1), -1)


def metric_values(rank: np.ndarray) -> dict[str, np.ndarray]:
    """Per user Recall@k (hit) and NDCG@k (one relevant item: 1 / log2(rank + 2))."""
    out = {}
    for k in KS:
        hit = (rank >= 0) & (rank < k)
        out[f"recall@{k}"] = hit.astype(np.float64)
        out[f"ndcg@{k}"] = np.where(hit, 1.0 / np.log2(np.maximum(rank, 0) + 2), 0.0)
    return out


def bootstrap(values: np.ndarray, seed: int, resamples: int = BOOTSTRAP) -> dict:
    """Mean over users with a 95 % percentile bootstrap interval (users resampled)."""
    rng = np.random.default_rng([seed, 7])
    means = values[rng.integers(0, values.shape[0], size=(resamples, values.shape[0]))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": round(float(values.mean()), 4), "lo": round(float(lo), 4), "hi": round(float(hi), 4)}


def paired_difference(a: np.ndarray, b: np.ndarray, seed: int) -> dict:
    """Mean of a - b over the same users with a paired 95 % bootstrap interval."""
    return bootstrap(a - b, seed)


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
    name: str, sids: np.ndarray, split: Split, budget: Budget, s: Settings, parts: list[str], log=print
) -> dict:
    """Train one generator on a tokenizer's IDs (early stopping on the validation users' Recall@10) and
    decode every part; per-part ranks and figures. ``s.dedup_digit`` False: the generator reads and emits
    the 3 base codes only (``generator_ids``)."""
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
        return float(metric_values(ranks_of(val.valid_target, lists))["recall@10"].mean())

    log(f"  [{name}] {s.generator} generator, training on {examples} examples")
    trained = train(model, examples, loss_of, budget, evaluate, log, label=name, lengths=lengths)
    out: dict[str, Any] = {"train": trained, "parameters": sum(p.numel() for p in model.parameters())}
    out["tune"] = tune_candidates(decode_semantic(model, sids, id_items, val, "valid", s, free=False), val)
    for part in parts:
        decoded = decode_semantic(model, sids, id_items, split, part, s)
        out[part] = decoded
        log(f"  [{name}] {part}: decoded, unconstrained invalid rate {decoded['invalid_rate_unconstrained']}")
    return out


def generator_ids(sids: np.ndarray, s: Settings) -> np.ndarray:
    """The IDs the generator reads and emits: the full unique IDs, or (``--dedup-digit off``) their 3 base
    codes, which several items may share."""
    return sids if s.dedup_digit else np.ascontiguousarray(sids[:, :LEVELS])


def popularity(split: Split, items: int) -> np.ndarray:
    """Each item's count in the training sequences."""
    return np.bincount(np.concatenate(split.train), minlength=items) if split.train else np.zeros(items, np.int64)


def item_budget(budget: Budget, epochs: int = 200) -> Budget:
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
    )


def run_items(
    split: Split, items: int, budget: Budget, s: Settings, parts: list[str], log=print, epochs: int = 200
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
                return float(metric_values(ranks_of(val.valid_target, lists))["recall@10"].mean())

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


def summarise(rows: dict[str, list[dict]], split: Split, parts: list[str], seed: int) -> list[dict]:
    """Per generator: metrics averaged over seeds per user, then bootstrapped over users."""
    table = []
    for name, runs in rows.items():
        if not runs:
            continue
        ok = [r for r in runs if r.get("status") == "ok"]
        row: dict[str, Any] = {"generator": name, "status": ok[0]["status"] if ok else runs[0]["status"]}
        if not ok:
            row["error"] = runs[0].get("error")
            table.append(row)
            continue
        for part in parts:
            target = split.target(part)
            per_user = _mean_values([metric_values(ranks_of(target, r[part]["lists"])) for r in ok])
            row[part] = {m: bootstrap(v, seed) for m, v in per_user.items()}
            row[f"_{part}_values"] = per_user
            row[f"_{part}_seed_values"] = {
                r.get("seed"): metric_values(ranks_of(target, r[part]["lists"])) for r in ok
            }  # popularity: one run, seed None (the same list for every seed)
            if "free_lists" in ok[0][part]:
                free = _mean_values([metric_values(ranks_of(target, r[part]["free_lists"])) for r in ok])
                row[part]["recall@10_unconstrained"] = bootstrap(free["recall@10"], seed)
            for key in ("invalid_rate_unconstrained", "invalid_top1_unconstrained", "decode_ms_per_user"):
                if key in ok[0][part]:
                    row[part][key] = round(float(np.mean([r[part][key] for r in ok])), 4)
        row["seeds"] = len(ok)
        row["per_seed"] = [seed_figures(r, split.target(parts[0]), parts[0]) for r in ok]
        row["train_s"] = round(float(np.mean([r["train"]["train_s"] for r in ok])), 1) if "train" in ok[0] else None
        row["ids"] = ok[0].get("ids")
        if "pop_correction" in ok[0]:
            row["pop_alpha"] = [r["pop_correction"]["alpha"] for r in ok]
            row["pop_valid_recall10_by_alpha"] = [r["pop_correction"]["valid_recall10_by_alpha"] for r in ok]
        if "train" in ok[0]:
            row["train_info"] = {k: v for k, v in ok[0]["train"].items() if k != "grid"}
        table.append(row)
    return table


POPULARITY_EDGES = (0, 1, 5, 20, 50)  # training-count buckets of the test item: 0, 1-4, 5-19, 20-49, 50+


def count_bucket(counts: np.ndarray) -> np.ndarray:
    """The ``POPULARITY_EDGES`` bucket of each training count."""
    return np.searchsorted(np.asarray(POPULARITY_EDGES), counts, side="right") - 1


def popularity_buckets(split: Split, items: int) -> tuple[np.ndarray, list[str]]:
    """Each test user's bucket of its test item's count in the training sequences, and the buckets' names."""
    edges = POPULARITY_EDGES
    names = [f"{a}-{b - 1}" for a, b in zip(edges[1:-1], edges[2:], strict=True)]
    names = ["0 (never in training)", *names, f"{edges[-1]}+"]
    return count_bucket(popularity(split, items)[split.test_target]), names


def by_popularity(table: list[dict], split: Split, items: int) -> dict:
    """Test Recall@10 (seed-averaged per user) of every row within each bucket of the test item's training count:
    where in the catalog's head or tail a row wins or loses."""
    bucket, names = popularity_buckets(split, items)
    users = np.bincount(bucket, minlength=len(names))
    out = {"buckets": names, "users": users.tolist(), "rows": {}}
    for r in table:
        values = r.get("_test_values")
        if values is not None:
            out["rows"][r["generator"]] = [
                round(float(values["recall@10"][bucket == i].mean()), 4) if users[i] else None
                for i in range(len(names))
            ]
    return out


def recommended_by_popularity(rows: dict[str, list[dict]], split: Split, items: int) -> dict[str, list[float]]:
    """Share of each row's test top-10 recommendations (over users and seeds) in each bucket of the recommended
    item's training count, beside ``test items``, the share of the test targets themselves: whether a row
    recommends the head more than users go there."""
    counts = popularity(split, items)
    n = len(POPULARITY_EDGES)

    def shares(bucket: np.ndarray) -> list[float]:
        found = np.bincount(bucket, minlength=n)
        return [round(float(v), 4) for v in found / max(int(found.sum()), 1)]

    out = {"test items": shares(popularity_buckets(split, items)[0])}
    for name, runs in rows.items():
        lists = [r["test"]["lists"][:, :10] for r in runs if r.get("status") == "ok" and "test" in r]
        if lists:
            out[name] = shares(count_bucket(counts[np.concatenate([x[x >= 0] for x in lists])]))
    return out


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


def seed_figures(run: dict, target: np.ndarray, part: str) -> dict:
    """One seed's run of a row: its mean Recall@10 / NDCG@10 on ``part`` and how its training ended."""
    values = metric_values(ranks_of(target, run[part]["lists"]))
    t = run.get("train") or {}
    return {
        "seed": run.get("seed"),
        "recall@10": round(float(values["recall@10"].mean()), 4),
        "ndcg@10": round(float(values["ndcg@10"].mean()), 4),
        "epochs_run": t.get("epochs_run"),
        "best_epoch": t.get("best_epoch"),
        "stopped": t.get("stopped"),
        "best_valid_recall10": t.get("best_valid_recall10"),
        "train_s": t.get("train_s"),
    }


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


def _unsourced_label(name: str) -> str:
    if name == SMALL_SHAPE_ROW:
        return "semid rqvae, 3 x 64 codes (IDs in the generator's 256-code vocabulary)"
    if name == LETTER_ROW:
        return f"semid rqvae + interactions + LETTER-style terms {LETTER}"
    if name == ADAPTIVE_SHAPE_ROW:
        return "semid rqvae, 3 x adaptive_codes(catalog) codes (IDs in the generator's 256-code vocabulary)"
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


def held_out_figures(table: list[dict], split: Split, held: np.ndarray, seed: int) -> tuple[int, list[dict]]:
    """Test figures of the users whose test item is one the tokenizers never saw (``--holdout-share``), and
    the paired differences of each semid row against the others on those users."""
    users = np.flatnonzero(np.isin(split.target("test"), held))
    for row in table:
        values = row.get("_test_values")
        if values is not None:
            row["test_heldout"] = {m: bootstrap(v[users], seed) for m, v in values.items()}
            row["_test_heldout_values"] = {m: v[users] for m, v in values.items()}
    return int(users.shape[0]), comparisons(table, "test_heldout", seed)


def _mean_values(runs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {m: np.mean([r[m] for r in runs], axis=0) for m in runs[0]}


def seeds_and_users_difference(a: list[np.ndarray], b: list[np.ndarray], seed: int, resamples: int = BOOTSTRAP) -> dict:
    """Mean of a - b with a 95 % two-level bootstrap interval: each resample draws the seeds (runs) and then
    the users, both with replacement, the same users in every seed (paired). ``a[i]``, ``b[i]``: per-user values
    of the i-th seed both rows ran. Unlike the users-only interval, it widens with the spread between seeds."""
    d = np.stack([x - y for x, y in zip(a, b, strict=True)])
    rng = np.random.default_rng([seed, 11])
    n_seeds, n_users = d.shape
    means = np.empty(resamples)
    for i in range(resamples):
        users = rng.integers(0, n_users, size=n_users)
        means[i] = d[rng.integers(0, n_seeds, size=n_seeds)][:, users].mean()
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": round(float(d.mean()), 4), "lo": round(float(lo), 4), "hi": round(float(hi), 4)}


def comparisons(table: list[dict], part: str, seed: int) -> list[dict]:
    """Paired bootstrap differences (Recall@10, NDCG@10) of each semid generator against every other row: over
    the users of the seed-averaged values; per seed both rows ran; and, with two or more such seeds, with the
    seeds resampled too (:func:`seeds_and_users_difference`)."""
    have = {r["generator"]: r[f"_{part}_values"] for r in table if f"_{part}_values" in r}
    runs = {r["generator"]: r.get(f"_{part}_seed_values") or {} for r in table}
    seeds = {r["generator"]: r.get("seeds") for r in table}
    out = []
    for mine in [g for g in have if g.startswith("semid")]:
        for other in [g for g in have if g != mine]:
            entry: dict[str, Any] = {"semid": mine, "other": other, "seeds": [seeds.get(mine), seeds.get(other)]}
            for metric in ("recall@10", "ndcg@10"):
                entry[metric] = paired_difference(have[mine][metric], have[other][metric], seed)
            theirs = runs[other]
            if list(theirs) == [None]:  # popularity: the same lists whatever the seed
                theirs = {k: theirs[None] for k in runs[mine]}
            common = sorted(k for k in runs[mine] if k in theirs and k is not None)
            entry["per_seed"] = {
                k: {m: round(float((runs[mine][k][m] - theirs[k][m]).mean()), 4) for m in ("recall@10", "ndcg@10")}
                for k in common
            }
            if len(common) >= 2:
                entry["seeds_and_users"] = {
                    m: seeds_and_users_difference(
                        [runs[mine][k][m] for k in common], [theirs[k][m] for k in common], seed
                    )
                    for m in ("recall@10", "ndcg@10")
                }
            out.append(entry)
    return out


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
            f"warm-up over the first epoch; at most {b['epochs']} epochs, early stopping on the Recall@10 of "
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
            "dedup digit), constrained by `SemanticIdTrie`. " + lever_notes(table) + "Seeds: "
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
    ap.add_argument("--item-epochs", type=int, default=200, help="most epochs of the item-id model")
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
        default=Settings.val_users,
        help="validation users early stopping scores (a fixed seeded sample), or 'all'",
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
        help="comma-separated --rows-dir directories of runs with other generator levers or another "
        "--budget-minutes on the same data and settings: their rows join the table, labelled, and the paired "
        "comparisons (paired by user)",
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
        "--holdout-share",
        type=float,
        default=None,
        help="fit every tokenizer on a seeded 1-S of the items (new items: the rest) and also report the users "
        "whose test item is held out; writes generative_retrieval_holdout.{json,md}",
    )
    return ap.parse_args(argv)


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
        s = replace(
            s, history=5, beams=5, max_users=args.max_users or 40, val_users=20, item_lrs=(3e-3,), item_dropouts=(0.2,)
        )
    return budget, s


def check_levers(args: argparse.Namespace) -> None:
    if args.min_epochs < 0:
        raise SystemExit(f"error: --min-epochs must be 0 (patience may stop any epoch) or more, not {args.min_epochs}")
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
    """The budget as saved rows are matched on: without the seed, and without ``min_epochs`` at 0 (rows saved
    before it existed match)."""
    out = asdict(replace(budget, seed=0))
    if not out["min_epochs"]:
        del out["min_epochs"]
    return out


def _without_levers(signature: dict) -> dict:
    """The signature without the generator levers and the training time cap: what a compared row must share."""
    settings = {k: v for k, v in signature["settings"].items() if k not in LEVER_DEFAULTS}
    budget = {k: v for k, v in signature["budget"].items() if k != "budget_s"}
    return {**signature, "settings": settings, "budget": budget}


def compared_label(name: str, theirs: dict, signature: dict) -> str:
    """A compared row's label: its levers, and its training cap when it is not this run's (a slower machine
    needs a larger cap to reach the same epoch cap; the row's own stopping is in the report)."""
    label = row_label(name, theirs["settings"])
    cap = theirs["budget"].get("budget_s")
    if cap != signature["budget"].get("budget_s"):
        label += f" (cap {cap / 60:g} CPU-min)" if cap else " (no time cap)"
    return label


def compared_rows(
    dirs: str, signature: dict, seeds: list[int], have: set[str], tokenizers: list[str]
) -> dict[str, list[dict]]:
    """Rows of this run's ``tokenizers`` saved in other ``--rows-dir`` directories (``--compare-to``) whose
    data and users are this run's and whose generator levers or training cap differ, by their label; the same users
    in the same order, so their per-user figures pair with this run's."""
    out: dict[str, list[dict]] = {}
    for d in [p for p in dirs.split(",") if p.strip()]:
        folder = Path(d.strip())
        if not folder.is_dir():
            raise SystemExit(f"error: --compare-to {folder} is not a directory")
        for path in sorted(folder.glob("*.seed*.pkl")):
            name, _, seed = path.name[: -len(".pkl")].rpartition(".seed")
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


def _save_row(path: Path, signature: dict, run: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        pickle.dump({"signature": signature, "run": slim_row(run)}, fh)
    tmp.replace(path)


def slim_row(run: dict) -> dict:
    """The row without what the report never reads: each part's ``emitted`` (every unconstrained beam's
    tokens, most of a full-size row's bytes; the invalid rates computed from it are kept), so that the
    rows of a long run are small enough to keep with its results."""
    return {k: {n: v for n, v in p.items() if n != "emitted"} if isinstance(p, dict) else p for k, p in run.items()}


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
        hist_users = np.flatnonzero(np.diff(hist.starts) >= 3)[: s.max_users]  # as leave_one_out picks them
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
                run = _run_tokenizer(row_name, raw, x, ids, split, seed_budget, s, parts, fit, likes)
            run["wall_s"] = round(time.perf_counter() - row_start, 1)
            run["load"] = [round(row_load, 2), round(os.getloadavg()[0], 2)]
            run["seed"] = seed
            _save_row(path, signature, run)
            gc.collect()
        elif args.reuse or args.merge_only:
            print(f"[{row_name}] seed {seed}: reused {path}", flush=True)
        rows[labels[row_name]].append(run)
    if args.compare_to:
        compared = compared_rows(args.compare_to, signature, seeds, set(rows), wanted)
        for label in compared:  # a scheme this run never ran shows up once, as the compared row
            own = label.split(" ")[0]
            if own in rows and all(r.get("status") == "not run" for r in rows[own]):
                del rows[own]
        rows.update(compared)
    if args.no_item_baseline:
        del rows[ITEM_BASELINE]
    if args.pop_correction:
        rows = with_corrected_rows(rows, log_counts(popularity(split, len(raw))), max(KS))
    rows[POPULARITY].append({"status": "ok", **{p: {"lists": popularity_lists(split, len(raw))} for p in parts}})

    table = summarise(rows, split, parts, seed=0)
    data = {
        "catalog": args.catalog,
        "interactions": args.interactions,
        "items": int(len(raw)),
        "users": len(split.train),
        "windows": int(len(windows)),
        "training_targets": int(learn.sum()),
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


def _run_tokenizer(name, raw, x, item_ids, split, budget, s, parts, fit=None, likes=None) -> dict:
    print(f"[{name}] seed {budget.seed}: fitting IDs (load {os.getloadavg()[0]:.2f})", flush=True)
    try:
        sids, info = fit_ids(name, raw, x, item_ids, budget.seed, fit, likes)
    except ImportError as err:
        return {"status": "not installed", "error": f"{type(err).__name__}: {err}"}
    except Exception as err:  # one failing tokenizer must not lose the others' figures
        return {"status": "failed", "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
    run = run_semantic(name, sids, split, budget, s, parts)
    return {"status": "ok", "ids": info, "sids": sids, **run}


if __name__ == "__main__":
    main()
