"""Plain-language verdicts on the headline figures of `semid evaluate`: green, amber or red.

The thresholds are rules of thumb for IDs a generative recommender will emit, not laws; they are
listed here, in one place, and printed in the report next to each figure.

- unique full IDs: green at 100 %, red below (two items with one ID cannot be told apart).
- base-code collision rate: green <= 5 %, amber <= 15 %, red above (collisions push work onto
  the dedup digit, which carries no meaning).
- items that needed the fallback: green 0, amber <= 1 %, red above (their last code was moved
  away from the tokenizer's choice).
- perplexity of each level over its most possible value (min(K, items)): green >= 0.5,
  amber >= 0.2, red below (a low value means a few codes take most items).
- depth-1 neighbour share: green >= 0.4, amber >= 0.2, red below; depth-1 lift over random
  pairs: green >= 5, amber >= 2, red below.
- prefix recall@k (true neighbours found by ranking on the shared prefix): green >= 0.1,
  amber >= 0.05, red below.

The neighbour thresholds are what good tokenizers reach on real text embeddings: green is what the best
of the peers reach on MovieLens and red what a collapsed RQ-VAE does (their figures:
benchmarks/results/compare_movielens.md). Every amber or red verdict carries one line of
advice (``advice``), what to try first.
- co-liked lift at depth 1: green >= 1.5, amber >= 1.1, red below.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from semid.model.training.metrics import flat_key


@dataclass(frozen=True)
class Rule:
    green: float
    amber: float
    higher_is_better: bool = True

    def status(self, value: float) -> str:
        if self.higher_is_better:
            return "green" if value >= self.green else "amber" if value >= self.amber else "red"
        return "green" if value <= self.green else "amber" if value <= self.amber else "red"


RULES: dict[str, Rule] = {
    "unique_full_ids": Rule(1.0, 1.0),
    "base_collision_rate": Rule(0.05, 0.15, higher_is_better=False),
    "fallback_share": Rule(0.0, 0.01, higher_is_better=False),
    "perplexity_ratio": Rule(0.5, 0.2),
    "nn_share_d1": Rule(0.4, 0.2),
    "nn_lift_d1": Rule(5.0, 2.0),
    "prefix_recall_at_k": Rule(0.1, 0.05),
    "coliked_lift_d1": Rule(1.5, 1.1),
}


@dataclass(frozen=True)
class Verdict:
    key: str
    label: str
    value: str
    status: str  # green / amber / red
    text: str  # one sentence for a person
    rule: str  # the thresholds, as text
    advice: str = ""  # amber or red: what to try first, one line


NEIGHBOURS_ADVICE = (
    "check the graph-targets decision (`semid inspect CKPT`) and keep train.graph_targets on; compare "
    "`--tokenizer rqkmeans`; neighbours are only as good as the embeddings"
)
ADVICE = {
    "unique_full_ids": "run `semid check --index DIR`; rebuild the index with `semid assign` into a new directory",
    "base_collision_rate": "more levels (`--levels 4`) or a larger codebook (`--codebook-size 512`); check the "
    "catalog for duplicate embeddings",
    "fallback_items": "a larger codebook (`--codebook-size`: the dedup digit holds K items per base code) or more "
    "levels",
    "perplexity": "train longer (`--epochs`); keep dead-code resets on (`--dead-code-threshold`)",
    "nn_share_d1": NEIGHBOURS_ADVICE,
    "nn_lift_d1": NEIGHBOURS_ADVICE,
    "prefix_recall_at_k": NEIGHBOURS_ADVICE,
    "coliked_lift_d1": "train with `--interactions FILE` to pull co-liked items under one first code",
}


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%" if x < 0.1 else f"{100 * x:.1f}%"


def _rule_text(rule: Rule, fmt: str = "{}") -> str:
    op = ">=" if rule.higher_is_better else "<="
    return f"green {op} {fmt.format(rule.green)}, amber {op} {fmt.format(rule.amber)}"


def verdicts(summary: dict[str, Any], levels: list[dict[str, Any]]) -> list[dict[str, str]]:
    """One verdict per headline figure present in ``summary`` (the flat dict of `semid evaluate`), and one
    per level of ``levels`` (`semid evaluate`'s per-level figures of the emitted codes, level 1 first)."""
    out: list[Verdict] = []
    s = summary
    rule = RULES["unique_full_ids"]
    status = rule.status(s["unique_full_ids"])
    text = "every item has its own ID" if status == "green" else "some items share a full ID: the index is broken"
    out.append(Verdict("unique_full_ids", "Unique full IDs", _pct(s["unique_full_ids"]), status, text, "green = 100%"))

    rule = RULES["base_collision_rate"]
    rate = s["base_collision_rate"]
    status = rule.status(rate)
    text = {
        "green": "few items share a base code; the dedup digit is rarely needed",
        "amber": "a noticeable share of items share a base code and are told apart only by the dedup digit",
        "red": "many items share base codes: the codes are too coarse (more levels or a larger K may help)",
    }[status]
    out.append(
        Verdict(
            "base_collision_rate",
            "Base-code collisions",
            f"{_pct(rate)} (largest bucket {s['largest_bucket']})",
            status,
            text,
            _rule_text(rule, "{:.0%}"),
        )
    )

    rule = RULES["fallback_share"]
    share = s["fallback_items"] / max(s["items"], 1)
    status = rule.status(share)
    text = {
        "green": "no bucket overflowed",
        "amber": "a few buckets overflowed; those items got a nearby free code instead of their own",
        "red": "many buckets overflowed; those items' last code does not describe them",
    }[status]
    out.append(
        Verdict("fallback_items", "Fallback items", f"{s['fallback_items']}", status, text, "green = 0, amber <= 1%")
    )

    rule = RULES["perplexity_ratio"]
    for lv in levels:
        level, ppl, most = lv["level"], lv["perplexity"], lv["max_perplexity"]
        ratio = ppl / max(most, 1)
        status = rule.status(ratio)
        text = {
            "green": "codes are used evenly",
            "amber": "some codes take many more items than others",
            "red": "a few codes take most items: this level says little about an item",
        }[status]
        out.append(
            Verdict(
                flat_key("perplexity", level),
                f"Level {level} perplexity",
                f"{ppl:.0f} of {most} ({ratio:.0%}), {lv['utilisation']:.0%} of codes used",
                status,
                text,
                _rule_text(rule, "{:.0%}") + " of min(K, items)",
            )
        )

    for key, label, fmt, rule_fmt, texts in (
        (
            "nn_share_d1",
            "Neighbours share the first code",
            "{:.1%}",
            "{:.0%}",
            (
                "most nearest neighbours sit under the same first code",
                "a fair share of nearest neighbours sit under the same first code",
                "nearest neighbours are mostly split across first codes",
            ),
        ),
        (
            "nn_lift_d1",
            "... lift over random pairs",
            "{:.1f}x",
            "{:.0f}x",
            (
                "the first code groups similar items far better than chance",
                "the first code groups similar items better than chance, but not by much",
                "the first code hardly groups similar items",
            ),
        ),
        (
            "prefix_recall_at_k",
            "Prefix recall@k",
            "{:.1%}",
            "{:.0%}",
            (
                "ranking by shared prefix finds many true neighbours",
                "ranking by shared prefix finds some true neighbours",
                "ranking by shared prefix finds few true neighbours",
            ),
        ),
        (
            "coliked_lift_d1",
            "Co-liked items share the first code",
            "{:.2f}x",
            "{:.1f}x",
            (
                "items liked by one user share first codes clearly more than random pairs",
                "items liked by one user share first codes a little more than random pairs",
                "the IDs carry little of what users co-like",
            ),
        ),
    ):
        if s.get(key) is None:
            continue
        rule = RULES[key]
        status = rule.status(s[key])
        value = fmt.format(s[key])
        if key == "prefix_recall_at_k":
            value += f" (random {s['prefix_recall_random']:.2%})"
        if key == "coliked_lift_d1":
            value += f" ({s['coliked_share_d1']:.1%} vs {s['coliked_random_share_d1']:.1%})"
        text = texts[("green", "amber", "red").index(status)]
        out.append(Verdict(key, label, value, status, text, _rule_text(rule, rule_fmt)))
    return [asdict(_advised(v)) for v in out]


def _advised(v: Verdict) -> Verdict:
    if v.status == "green":
        return v
    per_level = v.label.startswith("Level ")  # a level's perplexity verdict (one advice for every level)
    return Verdict(**{**asdict(v), "advice": ADVICE.get("perplexity" if per_level else v.key, "")})
