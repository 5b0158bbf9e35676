"""`semid.train` and `semid.Tokenizer`: fit a tokenizer on embeddings, load it, encode with it.

A facade over ``semid.model.training.job`` (training) and ``semid.service.encoder`` (batched encoding), so that a
user never imports from those internal modules.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from semid.model.config import SECTIONS, SemidConfig
from semid.service.encoder import CheckpointEncoder

__all__ = ["Tokenizer", "train"]


class Tokenizer:
    """A trained tokenizer (a checkpoint directory): embeddings in, base codes out.

    >>> tok = semid.Tokenizer.load("ckpt/")        # doctest: +SKIP
    >>> tok.encode(embeddings)                      # int64 [N, levels]   # doctest: +SKIP

    Base codes are the tokenizer's codes before collision resolution: two items may share them. The
    unique, stable semantic IDs (base codes plus a dedup digit) come from :meth:`semid.Index.assign`.
    """

    def __init__(self, encoder: CheckpointEncoder) -> None:
        self._encoder = encoder

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """The checkpoint at ``path`` (``CheckpointError`` if it is missing, incomplete or not semid's)."""
        return cls(CheckpointEncoder.from_dir(Path(path)))

    @property
    def path(self) -> Path:
        """The checkpoint directory."""
        return self._encoder.checkpoint.path

    @property
    def fingerprint(self) -> str:
        """Hash of the config and weights; an index records the fingerprint of the checkpoint it was built with."""
        return self._encoder.fingerprint

    @property
    def config(self) -> SemidConfig:
        """The configuration the tokenizer was trained with."""
        return self._encoder.checkpoint.config

    @property
    def metrics(self) -> dict[str, Any]:
        """The training run's metrics (the checkpoint's ``metrics.json``)."""
        return self._encoder.checkpoint.metrics

    @property
    def input_dim(self) -> int:
        """Embedding dimension the tokenizer expects."""
        return int(self._encoder.input_dim)

    @property
    def levels(self) -> int:
        """Codes per base code (the quantizer's levels)."""
        return int(self._encoder.levels)

    @property
    def codebook_size(self) -> int:
        """Codes per level."""
        return int(self._encoder.codebook_size)

    def encode(self, embeddings: Any) -> np.ndarray:
        """Base codes, int64 ``[N, levels]``, of float ``[N, input_dim]`` embeddings.

        ``EmbeddingError`` (a ``ValueError``) names the problem for a wrong shape or a non-finite value."""
        return self._encoder.encode(embeddings, alternatives=1).base_codes

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.path)!r}, levels={self.levels}, codebook_size={self.codebook_size})"


def train(
    embeddings: Any,
    out_dir: str | os.PathLike[str],
    *,
    config: SemidConfig | str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool = True,
    **overrides: Any,
) -> Tokenizer:
    """Fit a tokenizer on float ``[N, D]`` embeddings, write its checkpoint to ``out_dir`` and load it.

    ``config`` is a :class:`SemidConfig` or a JSON config file (default: the defaults); ``overrides`` set
    single fields by name, as the ``semid train`` flags do, e.g. ``tokenizer="rqkmeans"``, ``levels=3``,
    ``codebook_size=256``, ``epochs=20``, ``seed=0``. ``resume=True`` continues an interrupted RQ-VAE run in
    ``out_dir`` (same config). An unknown field name raises ``TypeError``; a value out of range raises
    ``ValueError`` naming the field.

    >>> tok = semid.train(embeddings, "ckpt/", tokenizer="rqkmeans", codebook_size=64)  # doctest: +SKIP
    """
    from semid.model.training.job import train_tokenizer  # torch: only when training

    if config is None:
        cfg = SemidConfig().validate()
    elif isinstance(config, SemidConfig):
        cfg = config
    else:
        cfg = SemidConfig.from_file(Path(config))
    known = {name: section for section, kind in SECTIONS.items() for name in kind.model_fields}
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise TypeError(f"train() got unknown config fields {unknown}; see semid.SemidConfig for the names")
    for section in SECTIONS:
        values = {k: v for k, v in overrides.items() if known[k] == section}
        if values:
            cfg = cfg.with_overrides(section, **values)
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    train_tokenizer(x, cfg, Path(out_dir), resume=resume, progress=progress)
    return Tokenizer.load(out_dir)
