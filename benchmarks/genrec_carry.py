"""Carrying a saved row over to a run with another ``--min-epochs`` when its training would have gone the same way.

``--min-epochs M`` only keeps patience from stopping a model before epoch M; until patience would have stopped it,
training is the same (same seed, same batches, same steps). A saved row whose training patience did not stop before
M is therefore the row a rerun with ``--min-epochs M`` would train, and need not be trained again. Whether it is
follows from what the row keeps: its validation curve, how many epochs it ran and what stopped it. The curve is
replayed under the new rule (:func:`replays_the_same`); only a row whose every other setting is the run's own
(:func:`differs_only_in_min_epochs`) is considered.

The replay compares the curve's values as saved (rounded to 4 decimals). They are exact when early stopping scores
at most 10,000 validation users (a Recall@10 over n users is a multiple of 1 / n), so carrying over needs
``--val-users`` to be such a count (:func:`exact_curve`).
"""

from __future__ import annotations

import pickle
from pathlib import Path

from benchmarks.genrec_model import Patience

MAX_EXACT_USERS = 10_000  # a Recall@10 over at most this many users survives rounding to 4 decimals


def replays_the_same(train: dict, *, patience: int, min_epochs: int) -> bool:
    """Whether a saved training record (``valid_recall10_curve``, ``epochs_run``, ``stopped``) would have stopped
    at the same epoch for the same reason under this ``min_epochs`` (everything else as it was trained).

    The rule is ``genrec_model.train``'s own (:class:`genrec_model.Patience`). Epochs past the saved run's last are
    unknown: a replay that needs one is not the same."""
    curve = {int(epoch): float(value) for epoch, value in train.get("valid_recall10_curve") or []}
    ran, stopped = int(train.get("epochs_run", 0)), train.get("stopped")
    if not curve or not ran:
        return False
    rule = Patience(patience, min_epochs)
    for epoch in range(1, ran + 1):
        if epoch in curve:
            rule.score(epoch, curve[epoch])
        if rule.stops(epoch):
            return epoch == ran and stopped == "patience"
    return stopped != "patience"  # ran to its end (max_epochs or the time cap) as before


def records(run: dict) -> list[dict]:
    """Every training a row holds: the item-id baseline's whole grid (each model early-stopped on its own), else
    the row's one generator."""
    train = run.get("train") or {}
    return list(train.get("grid") or [train])


def differs_only_in_min_epochs(saved: dict, signature: dict) -> bool:
    """Whether a saved row's signature is this run's but for the budget's ``min_epochs``."""
    if not saved or set(saved) != set(signature):
        return False
    mine, theirs = dict(signature["budget"]), dict(saved["budget"])
    mine.pop("min_epochs", None)
    theirs.pop("min_epochs", None)
    others = [k for k in signature if k != "budget"]
    return mine == theirs and all(saved[k] == signature[k] for k in others)


def exact_curve(signature: dict) -> bool:
    val_users = signature.get("settings", {}).get("val_users")
    return isinstance(val_users, int) and 0 < val_users <= MAX_EXACT_USERS


def carried_row(path: Path, signature: dict) -> dict | None:
    """The row saved at ``path`` (``genrec rows`` pickle) as this run's, when it differs only in ``min_epochs`` and
    each of its trainings replays the same under this run's; else None. The row notes where it came from."""
    if not path.is_file() or not exact_curve(signature):
        return None
    with open(path, "rb") as fh:
        saved = pickle.load(fh)
    theirs = saved.get("signature") or {}
    run = saved.get("run") or {}
    if run.get("status") != "ok" or not differs_only_in_min_epochs(theirs, signature):
        return None
    budget = signature["budget"]
    rule = {"patience": int(budget["patience"]), "min_epochs": int(budget.get("min_epochs", 0))}
    if not all(replays_the_same(r, **rule) for r in records(run)):
        return None
    return {**run, "carried_from": {"path": str(path), "min_epochs": int(theirs["budget"].get("min_epochs", 0))}}
