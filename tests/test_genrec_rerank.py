"""The decode-time popularity correction of the generative-retrieval benchmark (``--pop-correction``)."""

from __future__ import annotations

import numpy as np

from benchmarks.genrec_rerank import ALPHAS, choose_alpha, corrected_run, log_counts, rerank

# items 0..5; item 0 is seen 1000 times in training, the others once
COUNTS = log_counts(np.array([1000, 1, 1, 1, 1, 1]))


def test_alpha_zero_keeps_the_beam_order_and_padding():
    items = np.array([[0, 3, 2, -1], [5, 4, -1, -1]])
    scores = np.array([[-1.0, -1.2, -1.2, -np.inf], [-0.5, -3.0, -np.inf, -np.inf]], dtype=np.float32)
    assert rerank(items, scores, COUNTS, 0.0, 3).tolist() == [[0, 3, 2], [5, 4, -1]]


def test_a_large_alpha_demotes_the_popular_item_below_a_close_rare_one():
    items = np.array([[0, 3, 2]])
    scores = np.array([[-1.0, -1.5, -4.0]], dtype=np.float32)
    # log(1001) ~ 6.9: at alpha 0.2 item 0 scores -2.38, below item 3's -1.5 - 0.2 log 2 = -1.64
    assert rerank(items, scores, COUNTS, 0.2, 2).tolist() == [[3, 0]]
    assert rerank(items, scores, COUNTS, 0.05, 2).tolist() == [[0, 3]]  # -1.35 still above -1.53


def test_choose_alpha_picks_the_smallest_alpha_that_brings_the_targets_in():
    # ten users: the popular item 0 tops every list; each target is the 11th candidate, close behind
    users, width = 10, 12
    items = np.tile(np.arange(width), (users, 1))
    scores = np.tile(-np.arange(width, dtype=np.float32) * 0.01, (users, 1))
    scores[:, 0] = 0.0
    counts = log_counts(np.r_[np.full(10, 50), 1, 1])  # items 0..9 seen 50 times, 10 and 11 once
    tune = {"items": items, "scores": scores, "target": np.full(users, 10)}
    alpha, curve = choose_alpha(tune, counts, 10)
    assert [a for a, _ in curve] == list(ALPHAS)
    assert curve[0][1] == 0.0 and alpha > 0
    assert dict((a, r) for a, r in curve)[alpha] == 1.0
    assert all(r < 1.0 for a, r in curve if a < alpha)  # the smallest alpha that reaches the best recall


def test_a_run_without_candidates_gets_no_corrected_run():
    assert corrected_run({"status": "ok", "test": {"lists": np.zeros((2, 10), np.int64)}}, COUNTS, 10) is None
    assert corrected_run({"status": "failed", "tune": {}}, COUNTS, 10) is None
