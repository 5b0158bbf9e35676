"""`semid quickstart`: the whole pipeline on the built-in synthetic catalog, no external file or server.

synthetic catalog -> train (RQ-VAE) -> assign (index) -> export -> a few look-ups, printed.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from semid.model.config import SemidConfig, clamp_warm_ups
from semid.model.data.synthetic import synthetic_catalog, write_catalog
from semid.model.training.job import train_tokenizer
from semid.model.training.metrics import levels_from_flat
from semid.service.assign import assign_catalog
from semid.service.export import export_index
from semid.service.index.handle import SemanticIdIndex

MARKER = ".semid-quickstart"


def run_quickstart(
    out: str | Path,
    *,
    items: int,
    dim: int,
    epochs: int,
    seed: int,
    echo: Callable[[str], None],
    semid: str = "semid",
) -> dict[str, Path]:
    """``semid``: how the user runs the command (e.g. ``.venv/bin/semid``), for the closing "Serve it with" line."""
    out = Path(out)
    marker = out / MARKER
    if out.exists() and any(out.iterdir()):
        if not marker.is_file():
            raise FileExistsError(f"{out} exists and is not a quickstart directory; pass another --out")
        shutil.rmtree(out)  # a previous quickstart run: start afresh
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text("written by semid quickstart; removed by the next run\n")
    paths = {
        "catalog": out / "catalog.parquet",
        "checkpoint": out / "checkpoint",
        "index": out / "index",
        "ids": out / "semantic_ids.parquet",
    }
    echo(f"1/4 synthetic catalog: {items} items x {dim} dims -> {paths['catalog']}")
    catalog = synthetic_catalog(items=items, dim=dim, seed=seed)
    write_catalog(catalog, paths["catalog"])

    echo(f"2/4 train RQ-VAE ({epochs} epochs) -> {paths['checkpoint']}")
    base = SemidConfig()
    config = base.with_overrides("train", epochs=epochs, seed=seed, **clamp_warm_ups(base.train, epochs))
    fingerprint, metrics = train_tokenizer(catalog.embeddings, config, paths["checkpoint"], progress=True)
    final = metrics["final"]
    levels = levels_from_flat(final)
    echo(
        f"    recon_mse {final['recon_mse']:.4f}, level-1 utilisation {100 * levels[0]['utilisation']:.0f}%, "
        f"perplexity {'/'.join(format(lv['perplexity'], '.0f') for lv in levels)}, "
        f"base collisions {100 * final['base_collision_rate']:.2f}%, fingerprint {fingerprint}"
    )

    echo(f"3/4 assign semantic IDs -> {paths['index']}")
    summary = assign_catalog(
        checkpoint=paths["checkpoint"],
        catalog=paths["catalog"],
        index_dir=paths["index"],
        keep_columns=("title", "category"),
        progress=True,
    )
    for line in summary.lines():
        echo(f"    {line}")

    echo(f"4/4 export -> {paths['ids']}")
    rows = export_index(paths["index"], paths["ids"])
    index = SemanticIdIndex.open(paths["index"])
    item = index.snapshot.item(0)
    sid = item["semantic_id"]
    echo(f"    {rows} items exported; {item['title']} is {item['token']}")  # the title names the item
    first = index.snapshot.children(())[:5]
    echo(f"    first codes (code: items): {', '.join(f'{c}: {n}' for c, n in first)} ...")
    count, rows, _ = index.snapshot.prefix_rows(sid[:1], limit=3)
    echo(f"    prefix {sid[0]} holds {count} items, e.g.:")
    for it in index.snapshot.items(rows):
        echo(f"      {'-'.join(map(str, it['semantic_id']))}  {it['title']}")
    echo(f"done. Serve it with: {semid} serve --index {paths['index']}")
    return paths
