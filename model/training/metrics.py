"""Codebook-health figures computed from codes: utilisation, perplexity, dead codes, collisions.

Per-level health has one home, :func:`level_health`: it computes every per-level figure of codes
``[N, L]`` at full precision, as one :class:`LevelHealth` per level. Training curves (``model/training/train.py``),
``semid evaluate`` (``service/evaluation/figures.py``) and the id-quality report
(``service/evaluation/code_health.py``) all call it; none computes a level's figures itself.

Rounding happens once, at the JSON / presentation boundary, in :meth:`LevelHealth.to_json`, with the
precision of ``ROUNDING`` -- the reference scorer's (``../shared/tools/score_ids.py``: utilisation to 4
places, perplexity to 1), so ``semid evaluate`` prints exactly the scorer's figures.

On disk, flat records (a checkpoint's ``metrics.json`` rows, ``semid evaluate``'s ``summary``) carry the
levels as ``util_l1``, ``perplexity_l1``, ``dead_codes_l1``, ``max_perplexity_l1``, ... . Only
:func:`flat_levels` (writing) and :func:`levels_from_flat` (reading) know that key format; code works on
the structured levels and never parses a level number out of a key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Decimal places of each float figure in JSON (the reference scorer's); integers are exact.
ROUNDING: dict[str, int] = {"utilisation": 4, "perplexity": 1, "entropy": 4}

# Flat-record key prefix of each per-level figure: `{prefix}_l{level}`.
FLAT_PREFIX: dict[str, str] = {
    "utilisation": "util",
    "perplexity": "perplexity",
    "dead_codes": "dead_codes",
    "max_perplexity": "max_perplexity",
}
# The per-level figures of a training row (checkpoint metrics.json), in their on-disk order.
TRAINING_LEVEL_FIELDS: tuple[str, ...] = ("utilisation", "perplexity", "dead_codes")


@dataclass(frozen=True)
class LevelHealth:
    """Health of one level's codes, unrounded (round with :meth:`to_json`)."""

    level: int  # 1-based
    codebook_size: int
    items: int
    utilisation: float  # share of the codebook's codes used by at least one item
    entropy: float  # of the code distribution, in nats
    perplexity: float  # exp(entropy): the number of evenly used codes with the same entropy
    dead_codes: int  # codes no item uses
    counts: np.ndarray = field(repr=False, compare=False)  # items per code, [codebook_size]

    @property
    def max_perplexity(self) -> int:
        """The most perplexity can be: every code used evenly, or every item its own code."""
        return int(min(self.codebook_size, self.items))

    def sorted_counts(self) -> list[int]:
        """Items per code, high to low (the code-usage chart)."""
        return np.sort(self.counts)[::-1].astype(int).tolist()

    def to_json(self) -> dict[str, Any]:
        """The JSON form: floats rounded as ``ROUNDING`` says (the one place levels are rounded)."""
        return {
            "level": self.level,
            "codebook_size": self.codebook_size,
            "utilisation": round(self.utilisation, ROUNDING["utilisation"]),
            "perplexity": round(self.perplexity, ROUNDING["perplexity"]),
            "entropy": round(self.entropy, ROUNDING["entropy"]),
            "dead_codes": self.dead_codes,
            "max_perplexity": self.max_perplexity,
        }


def level_health(codes: np.ndarray, codebook_sizes: int | Sequence[int]) -> list[LevelHealth]:
    """Per-level health of codes ``[N, L]``: one :class:`LevelHealth` per level, level 1 first.

    ``codebook_sizes`` is one size for every level, or one per level. Perplexity is ``exp`` of the
    entropy of the level's code distribution, computed as the reference scorer computes it.
    """
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be [N, L], got shape {codes.shape}")
    levels = codes.shape[1]
    sizes = [int(codebook_sizes)] * levels if isinstance(codebook_sizes, int | np.integer) else list(codebook_sizes)
    if len(sizes) != levels:
        raise ValueError(f"{len(sizes)} codebook sizes for {levels} levels")
    out = []
    for level, size in enumerate(sizes):
        counts = np.bincount(codes[:, level], minlength=size)
        used = int((counts > 0).sum())
        p = counts[counts > 0].astype(np.float64) / max(int(counts.sum()), 1)
        entropy = float(-(p * np.log(p)).sum())
        out.append(
            LevelHealth(
                level=level + 1,
                codebook_size=size,
                items=int(codes.shape[0]),
                utilisation=used / size,
                entropy=entropy,
                perplexity=float(np.exp(entropy)),
                dead_codes=size - used,
                counts=counts,
            )
        )
    return out


def flat_key(name: str, level: int) -> str:
    """The flat-record key of figure ``name`` (a ``FLAT_PREFIX`` key) at 1-based ``level``: ``util_l1``."""
    return f"{FLAT_PREFIX[name]}_l{level}"


def flat_levels(
    levels: Iterable[LevelHealth | Mapping[str, Any]], fields: Sequence[str] = TRAINING_LEVEL_FIELDS
) -> dict[str, Any]:
    """Levels as flat JSON keys, level by level: ``{"util_l1": .., "perplexity_l1": .., ...}``.

    A ``LevelHealth`` is rounded (``to_json``); a dict (e.g. from ``levels_from_flat``) is taken as it
    is, and a field it lacks is left out.
    """
    out: dict[str, Any] = {}
    for lv in levels:
        figures = lv.to_json() if isinstance(lv, LevelHealth) else lv
        for name in fields:
            if name in figures:
                out[flat_key(name, figures["level"])] = figures[name]
    return out


def levels_from_flat(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The per-level figures of a flat record (e.g. a checkpoint's ``final``), as one dict per level:
    ``[{"level": 1, "utilisation": .., "perplexity": .., "dead_codes": ..}, ...]`` with the figures present.

    Reads any checkpoint's metrics.json, old ones included (their perplexity has 2 decimals).
    """
    out = []
    level = 1
    while True:
        found = {name: record[key] for name in FLAT_PREFIX if (key := flat_key(name, level)) in record}
        if not found:
            return out
        out.append({"level": level, **found})
        level += 1


def base_collision_rate(codes: np.ndarray) -> float:
    """Share of items whose full base code is not unique: 1 - distinct codes / items."""
    if codes.shape[0] == 0:
        return 0.0
    distinct = np.unique(codes, axis=0).shape[0]
    return 1.0 - distinct / codes.shape[0]


def largest_bucket(codes: np.ndarray) -> int:
    if codes.shape[0] == 0:
        return 0
    _, counts = np.unique(codes, axis=0, return_counts=True)
    return int(counts.max())


def codebook_health(codes: np.ndarray, codebook_size: int) -> dict[str, Any]:
    """A training row's health figures, JSON-ready: per-level ``util_l1``, ``perplexity_l1``,
    ``dead_codes_l1``, ... (``flat_levels``) plus the collision figures."""
    out = flat_levels(level_health(codes, codebook_size))
    out["base_collision_rate"] = round(base_collision_rate(codes), 5)
    out["largest_bucket"] = largest_bucket(codes)
    return out
