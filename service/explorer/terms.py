"""Terms of the kept text columns: simple tokenising, and the ranking that says what sets a node apart.

A term is a word of a kept text column (a string, or a list of strings: titles, genres, categories), lower
cased: a letter followed by letters or digits, hyphenated parts kept together, so "Sci-Fi|Horror (1982)" gives
sci-fi and horror. English stop
words and one-letter words are dropped. An item counts a term once, however often its columns repeat it.

A node's terms are ranked against its parent: ``share`` is the fraction of the node's items holding the term,
``lift`` that share over the parent's, and the score ``share * log2(lift)`` puts first the terms that are both
common in the node and rarer around it (a term every sibling shares scores 0; one rarer here scores below 0).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

import pyarrow as pa

MAX_CHARS = 2_000  # of one text value: a long description costs no more than its start
_WORD = re.compile(r"[^\W\d_][^\W_]*(?:-[^\W_]+)*")
STOP_WORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before being below
    between both but by can did do does doing down during each few for from further had has have having he her
    here hers herself him himself his how i if in into is it its itself just me more most my myself no nor not
    now of off on once only or other our ours ourselves out over own same she should so some such than that the
    their theirs them themselves then there these they this those through to too under until up very was we
    were what when where which while who whom why will with would you your yours yourself yourselves
    la le les de des du el los las der die das und di il""".split()
)


def text_columns(schema: pa.Schema | None) -> list[str]:
    """The kept columns holding text: strings, or lists of strings."""
    if schema is None:
        return []
    out = []
    for field in schema:
        kind = field.type
        if pa.types.is_list(kind) or pa.types.is_large_list(kind):
            kind = kind.value_type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            out.append(field.name)
    return out


def item_terms(values: Iterable[object]) -> set[str]:
    """The distinct terms of one item's text values (strings or lists of strings; anything else is skipped)."""
    terms: set[str] = set()
    for value in values:
        parts = value if isinstance(value, (list, tuple)) else (value,)
        for part in parts:
            if isinstance(part, str):
                terms.update(w for w in _WORD.findall(part[:MAX_CHARS].lower()) if len(w) > 1 and w not in STOP_WORDS)
    return terms


def rank_terms(
    counts: Mapping[str, int],
    items: int,
    parent_share: Mapping[str, float],
    *,
    top: int,
) -> list[dict[str, object]]:
    """The ``top`` terms of a node from its sampled items' term counts, ranked against the parent's shares.

    A term must be held by 2 sampled items (1 when the node has one); ties go to the more frequent term, then
    the alphabet, so the ranking is deterministic."""
    if items <= 0:
        return []
    least = min(2, items)
    ranked = []
    for term, n in counts.items():
        if n < least:
            continue
        share = n / items
        lift = share / max(parent_share.get(term, 0.0), 1e-12)
        ranked.append((round(-share * math.log2(lift), 9), -share, term, n, lift))  # rounded: equal shares tie
    ranked.sort()
    return [
        {"term": term, "items": n, "share": round(-neg_share, 4), "lift": round(lift, 3)}
        for _, neg_share, term, n, lift in ranked[:top]
    ]
