"""A seeded synthetic catalog with real structure, the built-in default to train on.

Items sit in categories > sub-categories (a two-level Gaussian hierarchy on the sphere),
with a share of near-duplicates (tiny noise on another item) and a few exact duplicates
(the same embedding under another item_id), as real catalogs have.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from semid.model.data.catalog import Catalog
from semid.model.data.files import write_parquet_atomically


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def synthetic_catalog(
    *,
    items: int = 20_000,
    dim: int = 384,
    categories: int = 24,
    subcategories: int = 12,
    near_duplicate_share: float = 0.05,
    exact_duplicates: int = 20,
    seed: int = 0,
) -> Catalog:
    if items < 1 or dim < 2:
        raise ValueError(f"synthetic catalog needs items >= 1 and dim >= 2, got items={items} dim={dim}")
    rng = np.random.default_rng(seed)
    cat_centres = _unit(rng.standard_normal((categories, dim)))
    sub_centres = _unit(cat_centres[:, None, :] + 0.6 * _unit(rng.standard_normal((categories, subcategories, dim))))
    # Zipf-like category popularity, as in real catalogs.
    weights = 1.0 / np.arange(1, categories * subcategories + 1) ** 0.6
    sub_of_item = rng.choice(categories * subcategories, size=items, p=weights / weights.sum())
    cat = sub_of_item // subcategories
    sub = sub_of_item % subcategories
    noise = rng.standard_normal((items, dim)).astype(np.float32)
    emb = sub_centres[cat, sub] + 0.45 * _unit(noise)
    n_near = int(items * near_duplicate_share)
    if n_near and items > 1:
        src = rng.integers(0, items, size=n_near)
        dst = rng.choice(items, size=n_near, replace=False)
        emb[dst] = emb[src] + 0.01 * _unit(rng.standard_normal((n_near, dim)))
    n_exact = min(exact_duplicates, items // 2)
    if n_exact:
        src = rng.choice(items, size=n_exact, replace=False)
        dst = (src + items // 2) % items
        emb[dst] = emb[src]
    emb = _unit(emb).astype(np.float32)
    ids = np.arange(1, items + 1, dtype=np.int64)
    titles = [f"item {i} (category {c}, sub-category {c}.{s})" for i, c, s in zip(ids, cat, sub, strict=True)]
    columns = pa.table({"title": titles, "category": pa.array(cat.astype(np.int32))})
    return Catalog(item_ids=ids, embeddings=emb, columns=columns)


def write_catalog(catalog: Catalog, path: str | Path) -> Path:
    """Write item_id, embedding (fixed_size_list<float32>) and any kept columns to Parquet."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dim = catalog.embeddings.shape[1]
    emb = pa.FixedSizeListArray.from_arrays(pa.array(catalog.embeddings.reshape(-1), pa.float32()), dim)
    ids = pa.array(catalog.item_ids.tolist() if catalog.item_ids.dtype == object else catalog.item_ids)
    table = pa.table({"item_id": ids, "embedding": emb})
    if catalog.columns is not None:
        for name in catalog.columns.column_names:
            table = table.append_column(name, catalog.columns.column(name))
    write_parquet_atomically(path, table)
    return path
