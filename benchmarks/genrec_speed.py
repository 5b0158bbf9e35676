"""What a full-size TIGER generator row of ``generative_retrieval.py`` costs: training step, epoch and decode.

    python benchmarks/genrec_speed.py --catalog ../shared/data/amazon-scientific/items.parquet \\
        --interactions ../shared/data/amazon-scientific/interactions.csv

On every user of the interactions (leave-one-out as the benchmark), with the benchmark's TIGER sizes, it
times ``--steps`` training steps (AdamW, gradient clipping, the benchmark's length-sorted batches and padding
trim) per configuration: torch threads 1 and 2 at ``--batch-size``, and for information bf16 autocast (which
changes the model, so the benchmark does not use it) and TIGER's batch of 256. A step's cost is measured in
this process's CPU seconds and in wall seconds (the machine may be shared: CPU seconds do not grow with other
jobs, wall seconds do); an epoch and a full row are extrapolated from the mean step, said so in the report.
Beam search (20 beams, constrained by the trie) is timed on ``--decode-users`` test users, before (the memory's
keys and values recomputed for every beam at every step and the decoder run over the whole prefix, as the
benchmark did), with the memory's keys and values computed once per batch (``TigerGenerator.begin``), and
after (also the decoder's self-attention cached, ``TigerGenerator.next_logits``), in the same run. The IDs
are random codes with the dedup digit (fitting a tokenizer is not what is timed; the generator's cost does
not depend on which codes it reads). Writes ``benchmarks/results/genrec_speed.{json,md}``.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import SHARED_DATA, markdown_table, write_results  # noqa: E402
from benchmarks.generative_retrieval import CODEBOOK, LEVELS, Settings, _by_length, _gather, _histories  # noqa: E402
from benchmarks.genrec_data import (  # noqa: E402
    IdItems,
    leave_one_out,
    next_item_examples,
    random_codes,
    read_histories,
    unique_ids,
)
from benchmarks.genrec_model import TIGER, Budget, TigerGenerator, _batches, beam_search  # noqa: E402
from semid.model.data.catalog import read_catalog  # noqa: E402

SCIENTIFIC = SHARED_DATA / "amazon-scientific"


class RepeatedMemory(TigerGenerator):
    """The decode before this change: every step repeats the memory per beam and every decoder layer
    recomputes its keys and values (same logits as ``TigerGenerator``)."""

    next_logits = None  # no decoder cache either: the whole prefix every step

    def begin(self, history, users=None):
        return self.encode(history, users)

    def step_logits(self, state, prefix):
        mem, mask = state
        b, n, step = prefix.shape
        h = self.decode(mem.repeat_interleave(n, dim=0), mask.repeat_interleave(n, dim=0), prefix.reshape(b * n, step))
        return self.head(h[:, -1], step)


class FoldedMemory(TigerGenerator):
    """The first change alone: memory keys/values once per batch, but the decoder still runs over the whole
    prefix at every step (no self-attention cache)."""

    next_logits = None


def _clock() -> tuple[float, float]:
    return time.process_time(), time.perf_counter()


def time_steps(model, codes, hist_t, target_t, lengths, budget, steps, warmup, bf16=False) -> dict:
    """Mean CPU and wall seconds of one training step over ``steps`` steps of the first epoch's batches."""
    opt = torch.optim.AdamW(model.parameters(), lr=budget.lr, weight_decay=0.01)
    batches = _batches(target_t.shape[0], budget.batch_size, torch.Generator().manual_seed(0), lengths)
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    model.train()
    cpu = wall = 0.0
    for i, idx in enumerate(batches[: warmup + steps]):
        c0, w0 = _clock()
        longest = max(1, int(lengths[idx].max()))
        with cast:
            loss = model.loss(_gather(codes, hist_t[idx, -longest:]), codes[target_t[idx]])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss.item()
        c1, w1 = _clock()
        if i >= warmup:
            cpu, wall = cpu + c1 - c0, wall + w1 - w0
    return {"step_cpu_s": round(cpu / steps, 4), "step_wall_s": round(wall / steps, 4)}


def time_decode(model, sids, id_items, split, users, s: Settings, trie: bool = True) -> dict:
    """CPU and wall ms per user of beam search over ``users``' test histories, batched as the benchmark."""
    model.eval()
    cpu = wall = 0.0
    for batch in _by_length(split, "test", s.history, s.eval_batch):
        history = torch.from_numpy(sids[_histories(split, users[batch], "test", s.history)])
        c0, w0 = _clock()
        beam_search(model, history, s.beams, id_items.trie if trie else None)
        c1, w1 = _clock()
        cpu, wall = cpu + c1 - c0, wall + w1 - w0
    n = users.shape[0]
    return {"decode_cpu_ms_per_user": round(1000 * cpu / n, 2), "decode_wall_ms_per_user": round(1000 * wall / n, 2)}


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", default=str(SCIENTIFIC / "items.parquet"))
    ap.add_argument("--interactions", default=str(SCIENTIFIC / "interactions.csv"))
    ap.add_argument("--batch-size", type=int, default=64, help="the controlled slice's batch (TIGER's: 256)")
    ap.add_argument("--steps", type=int, default=40, help="timed training steps per configuration")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--decode-users", type=int, default=256, help="test users beam search is timed on")
    ap.add_argument("--val-users", type=int, default=1000, help="validation users per epoch (row cost)")
    ap.add_argument("--epochs", type=int, default=8, help="epochs a row runs (for the row cost)")
    ap.add_argument("--out", default=None, help="results directory (default benchmarks/results)")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse(argv)
    if args.out:  # common.RESULTS is read when common is imported: set it, not the environment
        import benchmarks.common as common

        common.RESULTS = Path(args.out)
    load_start = [round(v, 2) for v in os.getloadavg()]
    cat = read_catalog(args.catalog)
    items = len(cat.item_ids)
    split = leave_one_out(read_histories(args.interactions, np.asarray(cat.item_ids)))
    s = Settings(generator="tiger")
    codes_np = random_codes(items, LEVELS, CODEBOOK, 0)
    sids = unique_ids(codes_np, np.zeros(items), np.asarray(cat.item_ids), CODEBOOK)
    id_items = IdItems.build(sids, np.zeros(items), (CODEBOOK,) * (LEVELS + 1))
    hist, target = next_item_examples(split.train, s.history)
    hist_t, target_t, codes = torch.from_numpy(hist), torch.from_numpy(target), torch.from_numpy(sids)
    lengths = (hist_t >= 0).sum(dim=1)
    examples, users = int(target.shape[0]), len(split.train)
    budget = replace(Budget(), **TIGER, seed=0)
    decode_users = np.sort(np.random.default_rng([0, 9]).choice(users, min(args.decode_users, users), replace=False))
    print(f"{items} items, {users} users, {examples} training examples", flush=True)

    configs = [(1, args.batch_size, False), (2, args.batch_size, False), (1, args.batch_size, True), (1, 256, False)]
    rows = []
    for threads, batch, bf16 in configs:
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        b = replace(budget, batch_size=batch)
        model = TigerGenerator(LEVELS + 1, CODEBOOK, s.history, b)
        steps = max(4, args.steps * args.batch_size // batch)
        load = os.getloadavg()[0]
        row = {"threads": threads, "batch": batch, "autocast": "bf16" if bf16 else "-", "steps_timed": steps}
        row.update(time_steps(model, codes, hist_t, target_t, lengths, b, steps, args.warmup, bf16))
        per_epoch = math.ceil(examples / batch)
        row["steps_per_epoch"] = per_epoch
        row["epoch_train_cpu_min"] = round(per_epoch * row["step_cpu_s"] / 60, 1)
        row["epoch_train_wall_min"] = round(per_epoch * row["step_wall_s"] / 60, 1)
        if not bf16 and batch == args.batch_size:
            old = RepeatedMemory(LEVELS + 1, CODEBOOK, s.history, b)
            old.load_state_dict(model.state_dict())
            sub = _subset(split, decode_users)
            before = time_decode(old, sids, id_items, sub, np.arange(len(decode_users)), s)
            folded = FoldedMemory(LEVELS + 1, CODEBOOK, s.history, b)
            folded.load_state_dict(model.state_dict())
            fold = time_decode(folded, sids, id_items, sub, np.arange(len(decode_users)), s)
            after = time_decode(model, sids, id_items, sub, np.arange(len(decode_users)), s)
            free = time_decode(model, sids, id_items, sub, np.arange(len(decode_users)), s, trie=False)
            row["decode_cpu_ms_before"] = before["decode_cpu_ms_per_user"]
            row["decode_cpu_ms_memory_once"] = fold["decode_cpu_ms_per_user"]
            row["decode_cpu_ms_after"] = after["decode_cpu_ms_per_user"]
            row["decode_wall_ms_before"] = before["decode_wall_ms_per_user"]
            row["decode_wall_ms_after"] = after["decode_wall_ms_per_user"]
            row["decode_unconstrained_cpu_ms"] = free["decode_cpu_ms_per_user"]
            for when in ("before", "after"):
                val_s = args.val_users * row[f"decode_cpu_ms_{when}"] / 1000
                test_s = users * (row[f"decode_cpu_ms_{when}"] + row["decode_unconstrained_cpu_ms"]) / 1000
                epoch_s = per_epoch * row["step_cpu_s"] + val_s
                row[f"row_cpu_min_{when}"] = round((args.epochs * epoch_s + test_s) / 60, 1)
                wall_ratio = row["step_wall_s"] / max(row["step_cpu_s"], 1e-9)
                row[f"row_wall_min_{when}_at_this_load"] = round(row[f"row_cpu_min_{when}"] * wall_ratio, 1)
        row["load_avg_1min"] = [round(load, 2), round(os.getloadavg()[0], 2)]
        rows.append(row)
        print(row, flush=True)
    data = {
        "catalog": args.catalog,
        "interactions": args.interactions,
        "items": items,
        "users": users,
        "training_examples": examples,
        "budget": {**budget.__dict__, "batch_size": args.batch_size},
        "epochs_for_row_cost": args.epochs,
        "val_users": args.val_users,
        "decode_users": int(decode_users.shape[0]),
        "load_avg_start": load_start,
        "load_avg_end": [round(v, 2) for v in os.getloadavg()],
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rows": rows,
    }
    path = write_results("genrec_speed", data, markdown(data))
    print(path.read_text())
    return data


def _subset(split, users):
    from benchmarks.generative_retrieval import subset

    return subset(split, users)


def markdown(data: dict) -> str:
    cols = ["threads", "batch", "autocast", "steps_timed", "step_cpu_s", "step_wall_s", "steps_per_epoch"]
    cols += ["epoch_train_cpu_min", "epoch_train_wall_min", "load_avg_1min"]
    dec = ["threads", "batch", "decode_cpu_ms_before", "decode_cpu_ms_memory_once", "decode_cpu_ms_after"]
    dec += ["decode_wall_ms_before"]
    dec += ["decode_wall_ms_after", "decode_unconstrained_cpu_ms", "row_cpu_min_before", "row_cpu_min_after"]
    dec += ["row_wall_min_before_at_this_load", "row_wall_min_after_at_this_load"]
    with_decode = [r for r in data["rows"] if "decode_cpu_ms_after" in r]
    return "\n".join(
        [
            f"Full size: catalog `{data['catalog']}` ({data['items']} items), interactions `{data['interactions']}`, "
            f"all {data['users']} users, {data['training_examples']} training examples (one per training item, "
            "as the TIGER generator learns). TIGER sizes (d_model 128, 4 + 4 layers, 6 heads of 64, feed-forward "
            "1024), random IDs with the dedup digit (4 tokens). Load average "
            f"{data['load_avg_start']} at start, {data['load_avg_end']} at end; peak RSS {data['max_rss_mb']} MB.",
            "",
            "## Training step (measured) and epoch (extrapolated: steps per epoch x mean step)",
            "",
            markdown_table(data["rows"], cols),
            "",
            "CPU seconds are this process's (user + system); wall seconds include waiting for a core on the "
            "shared machine. bf16 autocast and batch 256 are for information: bf16 changes the model and is not "
            "used by the benchmark; batch 256 is TIGER's, the controlled slice uses 64.",
            "",
            f"## Beam search (20 beams, {data['decode_users']} test users) and a full-size row (extrapolated)",
            "",
            markdown_table(with_decode, dec),
            "",
            "before: every decode step repeated the encoder memory per beam, recomputed its cross-attention "
            "keys and values in every decoder layer and ran the decoder over the whole prefix; memory_once: "
            "those keys and values computed once per batch; after: also the decoder's self-attention keys and "
            "values cached, so each step runs only the newest token (same beams and logits). Row cost "
            f"(extrapolated, CPU minutes): {data['epochs_for_row_cost']} epochs x (steps per epoch x step CPU + "
            f"{data['val_users']} validation users x constrained decode) + every test user x (constrained + "
            "unconstrained decode); ID fitting not included. The wall column scales it by this run's wall/CPU "
            "ratio of a step, i.e. at this run's load.",
        ]
    )


if __name__ == "__main__":
    main()
