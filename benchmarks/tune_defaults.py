"""Try RQ-VAE config overrides on a catalog and print one JSON line of ID quality per run.

    python benchmarks/tune_defaults.py '{"train": {"ema": true}}' '{"model": {"latent_dim": 64}}'

Each argument is a JSON object of `model`/`train` overrides on the current defaults (a `tok` key picks
rqkmeans). Used to choose the defaults; the runs behind them are in benchmarks/results/tuning.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import MOVIELENS  # noqa: E402
from benchmarks.quality import semid_row  # noqa: E402
from semid.model.data.catalog import read_catalog  # noqa: E402
from semid.model.training.metrics import flat_key  # noqa: E402

KEYS = [
    "tokenizer",
    "fit_s",
    "recon_mse",
    "base_collision_rate",
    *(flat_key("perplexity", level) for level in (1, 2, 3)),
    *(flat_key("utilisation", level) for level in (1, 2, 3)),
    "nn_share_d1",
    "nn_share_d2",
]


def main() -> None:
    emb = read_catalog(MOVIELENS).embeddings
    for spec in sys.argv[1:]:
        overrides = json.loads(spec)
        row = semid_row(spec, emb, overrides.pop("tok", "rqvae"), overrides)
        print(json.dumps({k: row[k] for k in KEYS}), flush=True)


if __name__ == "__main__":
    main()
