"""Does a code change leave a catalog's checkpoint unchanged? Train from two git revisions, compare weights.

    python benchmarks/same_weights.py --before REV --after REV            # MovieLens, defaults, seed 0
    python benchmarks/same_weights.py --compare DIR_BEFORE DIR_AFTER      # only compare two checkpoints

Train mode: ``model/`` of each revision is exported (``git archive``) to a temporary tree and
imported from there in a child process (the editable install's finder is left out), which trains
the catalog (default: MovieLens, ../shared/data) with the default config and ``--seed``, one torch
thread, and writes the checkpoint. Compare mode and the end of train mode: every tensor of
``model.safetensors`` compared bit for bit, the final metrics, and the config fields that differ.
Writes benchmarks/results/<name>.{md,json} (default ``same_weights``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import MOVIELENS, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import sys
tree, catalog, out, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
sys.path.insert(0, tree)
import torch
import semid.model.training.job as job
assert job.__file__.startswith(tree), job.__file__
from semid.model.data.catalog import read_catalog
from semid.model.config import SemidConfig
torch.set_num_threads(1)
job.train_tokenizer(read_catalog(catalog).embeddings, SemidConfig().with_overrides("train", seed=seed), out)
"""


def train_from(rev: str, catalog: Path, out: Path, seed: int, work: Path) -> None:
    tree = work / f"tree-{rev}"
    (tree / "semid").mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "model"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    (tree / "model").rename(tree / "semid" / "model")
    subprocess.run([sys.executable, "-c", CHILD, str(tree), str(catalog), str(out), str(seed)], check=True)


def compare(before: Path, after: Path) -> dict:
    a, b = load_file(before / "model.safetensors"), load_file(after / "model.safetensors")
    same = sorted(k for k in a if k in b and a[k].shape == b[k].shape and np.array_equal(a[k], b[k]))
    ca, cb = (json.loads((d / "config.json").read_text()) for d in (before, after))
    fields = sorted(set(ca["train"]) | set(cb["train"]))
    config_diff = {
        k: [ca["train"].get(k), cb["train"].get(k)] for k in fields if ca["train"].get(k) != cb["train"].get(k)
    }
    ma, mb = (json.loads((d / "metrics.json").read_text())["final"] for d in (before, after))
    return {
        "tensors": len(a),
        "identical_tensors": len(same),
        "identical_weights": a.keys() == b.keys() and len(same) == len(a),
        "same_final_metrics": ma == mb,
        "model_config_same": ca["model"] == cb["model"],
        "train_config_diff": config_diff,
        "final_before": ma,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--before")
    ap.add_argument("--after")
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("DIR_BEFORE", "DIR_AFTER"))
    ap.add_argument("--catalog", type=Path, default=MOVIELENS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="same_weights")
    ap.add_argument("--note", default="", help="how the compared checkpoints were made (compare mode)")
    args = ap.parse_args()
    if args.compare:
        result = compare(*args.compare)
    else:
        if not (args.before and args.after):
            raise SystemExit("give --before REV --after REV, or --compare DIR DIR")
        with tempfile.TemporaryDirectory(prefix="semid-same-weights-") as tmp:
            work = Path(tmp)
            for rev in (args.before, args.after):
                train_from(rev, args.catalog, work / rev, args.seed, work)
            result = compare(work / args.before, work / args.after)
        result.update(before=args.before, after=args.after, catalog=str(args.catalog), seed=args.seed)
    lines = [f"- {key}: `{json.dumps(value)}`" for key, value in result.items() if key != "final_before"]
    lines.append(f"- final metrics (before): `{json.dumps(result['final_before'])}`")
    if args.note:
        lines.append(f"\n{args.note}")
    path = write_results(args.name, result, "\n".join(lines))
    print(path.read_text())  # noqa: T201


if __name__ == "__main__":
    main()
