"""How many IDs survive a retraining, with and without `semid align`?

    python benchmarks/migration_agreement.py [--catalog PATH] [--seeds 0,1] [--epochs N]

Trains the default tokenizer twice on the catalog (MovieLens-small by default) with two seeds,
renumbers the second checkpoint's codes to agree with the first (`semid align`), builds an index
from each checkpoint (`semid assign`) and compares them item by item (`semid migrate`). Reported:
the share of items keeping their level-1 code, first two codes, full base code and full ID, before
and after alignment, and a check that the aligned checkpoint encodes every item to exactly the
renamed codes of the unaligned one. Writes benchmarks/results/migration_agreement.{md,json}.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import MOVIELENS, markdown_table, write_results  # noqa: E402
from semid.model.config import SemidConfig  # noqa: E402
from semid.model.data.catalog import read_catalog  # noqa: E402
from semid.model.training.alignment import fit_alignment  # noqa: E402
from semid.model.training.job import train_tokenizer  # noqa: E402
from semid.service.assign import assign_catalog  # noqa: E402
from semid.service.encoder import CheckpointEncoder  # noqa: E402
from semid.service.migration import align_checkpoint, write_migration  # noqa: E402

FIGURES = [
    ("level1", "level-1 code"),
    ("first2", "first two codes"),
    ("base_code", "full base code"),
    ("full_id", "full ID"),
]


def encode(checkpoint: Path, embeddings: np.ndarray) -> np.ndarray:
    return CheckpointEncoder.from_dir(checkpoint, alternatives=1).encode(embeddings, alternatives=1).base_codes


def run(catalog: Path, seeds: tuple[int, int], epochs: int | None, work: Path) -> dict:
    cat = read_catalog(catalog)
    ckpt = {}
    train_seconds = {}
    for seed in seeds:
        config = SemidConfig().with_overrides("train", seed=seed, epochs=epochs)
        start = time.perf_counter()
        train_tokenizer(cat.embeddings, config, work / f"seed{seed}")
        train_seconds[seed] = round(time.perf_counter() - start, 1)
        ckpt[seed] = work / f"seed{seed}"
        print(f"trained seed {seed} in {train_seconds[seed]} s", flush=True)
    old, new = ckpt[seeds[0]], ckpt[seeds[1]]
    start = time.perf_counter()
    summary = align_checkpoint(new, old, catalog, work / "aligned")
    align_seconds = round(time.perf_counter() - start, 1)
    # exactness: the aligned checkpoint's codes are the renamed codes of the unaligned one, on every item
    old_codes, new_codes = encode(old, cat.embeddings), encode(new, cat.embeddings)
    alignment = fit_alignment(old_codes, new_codes, SemidConfig().model.codebook_size)
    aligned_codes = encode(work / "aligned", cat.embeddings)
    exact = bool((aligned_codes == alignment.rename(new_codes)).all())
    for name, path in (("old", old), ("new", new), ("aligned", work / "aligned")):
        assign_catalog(checkpoint=path, catalog=catalog, index_dir=work / f"index-{name}")
    before = write_migration(work / "index-old", work / "index-new", work / "before.parquet").to_dict()
    after = write_migration(work / "index-old", work / "index-aligned", work / "after.parquet").to_dict()
    return {
        "catalog": str(catalog),
        "items": len(cat),
        "seeds": list(seeds),
        "epochs": epochs or SemidConfig().train.epochs,
        "train_seconds": train_seconds,
        "align_seconds": align_seconds,
        "aligned_encoding_exact": exact,
        "alignment_identity": alignment.identity,
        "before": before["keeps"],
        "after": after["keeps"],
        "items_in_both": before["items_in_both"],
        "align_summary": summary.to_dict(),
    }


def markdown(result: dict) -> str:
    rows = [
        {
            "share of items keeping": label,
            "unaligned (seed 1 vs seed 0)": f"{100 * result['before'][key]:.1f} %",
            "after `semid align`": f"{100 * result['after'][key]:.1f} %",
        }
        for key, label in FIGURES
    ]
    cols = ["share of items keeping", "unaligned (seed 1 vs seed 0)", "after `semid align`"]
    exact = "yes" if result["aligned_encoding_exact"] else "NO"
    return (
        f"Catalog `{result['catalog']}` ({result['items']} items); default config, {result['epochs']} epochs, "
        f"seeds {result['seeds'][0]} (old) and {result['seeds'][1]} (new); training took "
        f"{', '.join(f'{s} s' for s in result['train_seconds'].values())}, alignment {result['align_seconds']} s "
        "(encoding the catalog with both checkpoints included).\n\n"
        + markdown_table(rows, cols)
        + f"\n\nItems compared: {result['items_in_both']} of {result['items']} (in both indexes). The aligned "
        f"checkpoint encodes every item to exactly the renamed codes of the unaligned one: {exact}. The full ID "
        "also includes the dedup digit that `semid assign` adds to each base code."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", type=Path, default=MOVIELENS)
    parser.add_argument("--seeds", default="0,1", help="old,new training seeds")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the config default)")
    args = parser.parse_args()
    seeds = tuple(int(s) for s in args.seeds.split(","))
    if len(seeds) != 2:
        parser.error("--seeds takes two seeds, old,new")
    if not args.catalog.is_file():
        parser.error(f"catalog {args.catalog} not found (MovieLens lives in ../shared/data)")
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.catalog, seeds, args.epochs, Path(tmp))
    path = write_results("migration_agreement", result, markdown(result))
    print(markdown(result))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
