"""Figures of the generative-retrieval benchmark: each user's Recall/NDCG from a ranked list, bootstrap
intervals over users (and over seeds and users), the paired comparisons of semid's rows against every other
row, and the split of test users by how often their target appears in training.

Every function takes numpy arrays or the per-row dicts ``generative_retrieval.main`` builds; nothing here trains
or decodes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.genrec_data import Split, popularity

KS = (5, 10)
BOOTSTRAP = 1000


def ranks_of(target: np.ndarray, lists: np.ndarray) -> np.ndarray:
    """0-based rank of each user's target in its list [U, k] (-1: absent)."""
    hit = lists == target[:, None]
    return np.where(hit.any(axis=1), hit.argmax(axis=1), -1)


def recall_at(lists: np.ndarray, target: np.ndarray, k: int = 10) -> float:
    """Share of users whose target is in the first ``k`` of their list."""
    return float((lists[:, :k] == target[:, None]).any(axis=1).mean()) if len(target) else 0.0


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
            each = [metric_values(ranks_of(target, r[part]["lists"])) for r in ok]
            per_user = mean_values(each)
            row[part] = {m: bootstrap(v, seed) for m, v in per_user.items()}
            row[f"_{part}_values"] = per_user
            row[f"_{part}_seed_values"] = {
                r.get("seed"): values for r, values in zip(ok, each, strict=True)
            }  # popularity: one run, seed None (the same list for every seed)
            if "free_lists" in ok[0][part]:
                free = mean_values([metric_values(ranks_of(target, r[part]["free_lists"])) for r in ok])
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


def mean_values(runs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
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
