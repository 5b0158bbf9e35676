"""benchmarks/new_items_large.py's projected-P rows: every trained item an anchor, searched in P dimensions."""

from __future__ import annotations

import numpy as np

from benchmarks.new_items_large import _encode, _set_projected, _set_rows
from semid.model.training.checkpoint import load_checkpoint


def test_a_full_rank_projection_votes_as_the_plain_anchors_and_trained_items_keep_their_codes(
    tiny_checkpoint, tiny_catalog
):
    tok = load_checkpoint(tiny_checkpoint).tokenizer.eval()
    raw = np.ascontiguousarray(tiny_catalog.embeddings, dtype=np.float32)
    fit = np.arange(0, len(raw), 2)  # every other item trained; the rest are "new"
    rng = np.random.default_rng(0)
    new = raw[1::2] + 0.05 * rng.standard_normal(raw[1::2].shape).astype(np.float32)
    items = np.concatenate([raw[fit], new])

    _set_rows(tok, raw[fit], np.arange(len(fit)), digests=True)
    plain, _ = _encode(tok, items, passes=1)
    _set_projected(tok, raw[fit], raw.shape[1])  # every direction kept: the same neighbours, the same vote
    full, _ = _encode(tok, items, passes=1)
    assert tok.anchors.size == len(fit)
    np.testing.assert_array_equal(full, plain)

    _set_projected(tok, raw[fit], 2)  # a coarse search: new items may move, trained items may not
    coarse, _ = _encode(tok, items, passes=1)
    assert tok.anchors.vectors.shape[1] == 2
    np.testing.assert_array_equal(coarse[: len(fit)], plain[: len(fit)])
