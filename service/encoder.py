"""From embeddings to base codes with a loaded checkpoint: the service's view of the tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from semid.model.training.checkpoint import LoadedCheckpoint, load_checkpoint
from semid.service.errors import EmbeddingError
from semid.service.ids.layout import IdLayout


@dataclass
class EncodedBatch:
    base_codes: np.ndarray  # int64 [N, L]
    distances: np.ndarray  # float32 [N]: distance of the latent to its code reconstruction
    alternatives: np.ndarray  # int64 [N, C]: last-level codes, nearest first


class CheckpointEncoder:
    """Wraps a tokenizer for batched, autograd-free encoding of NumPy embeddings."""

    def __init__(self, checkpoint: LoadedCheckpoint, *, alternatives: int = 16, batch_size: int = 16384):
        self.checkpoint = checkpoint
        self.tokenizer = checkpoint.tokenizer.eval()
        cfg = checkpoint.config.model
        self.input_dim = cfg.input_dim
        self.levels = cfg.levels
        self.codebook_size = cfg.codebook_size
        self.vector_dim = cfg.code_dim
        self.alternatives = alternatives
        self.batch_size = batch_size
        self.layout = IdLayout.for_tokenizer(levels=cfg.levels, codebook_size=cfg.codebook_size)
        self.unit_length_input = cfg.normalization == "l2"

    @classmethod
    def from_dir(cls, path: str | Path, **kw: int) -> CheckpointEncoder:
        return cls(load_checkpoint(path), **kw)

    @property
    def fingerprint(self) -> str:
        return self.checkpoint.fingerprint

    def check(self, embeddings: np.ndarray, *, field: str = "embeddings", first_row: int = 0) -> np.ndarray:
        """float32 C-contiguous [N, D] with D == input_dim and only finite values, or EmbeddingError."""
        try:
            x = np.ascontiguousarray(embeddings, dtype=np.float32)
        except (TypeError, ValueError) as err:
            raise EmbeddingError(f"{field} must be numbers: {err}", field=field) from err
        if x.ndim != 2:
            raise EmbeddingError(f"{field} must be a list of vectors, got an array of shape {x.shape}", field=field)
        if x.shape[0] == 0:
            raise EmbeddingError(f"{field} is empty; expected at least one embedding", field=field)
        if x.shape[1] != self.input_dim:
            raise EmbeddingError(
                f"{field} has dimension {x.shape[1]}; the checkpoint expects {self.input_dim}", field=field
            )
        if not x.flags.writeable:  # e.g. zero-copy from Arrow; torch wants writable memory
            x = x.copy()
        problems = [(~np.isfinite(x).all(axis=1), "contains NaN or Inf")]
        if self.unit_length_input:  # the checkpoint scales rows to unit length
            with np.errstate(over="ignore"):
                norms = np.linalg.norm(x, axis=1)
            problems += [
                # its sum of squares overflows float32: the model would divide by inf and encode zeros
                (
                    np.isinf(norms),
                    "is too long to normalise: its squared length overflows float32 (values beyond "
                    "~1e19); scale the embedding down",
                ),
                # a zero row has no direction to encode
                (
                    ~(norms > 1e-12),
                    "is a zero vector; the checkpoint normalises rows to unit length, which is undefined for it",
                ),
            ]
        for bad, what in problems:
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise EmbeddingError(f"{field}[{first_row + row}] {what}", field=field, row=row)
        return x

    def encode(self, embeddings: np.ndarray, *, alternatives: int | None = None) -> EncodedBatch:
        x = self.check(embeddings)
        alt = self.alternatives if alternatives is None else alternatives
        codes, dists, alts = [], [], []
        with torch.inference_mode():
            for s in range(0, x.shape[0], self.batch_size):
                out = self.tokenizer.encode(torch.from_numpy(x[s : s + self.batch_size]), alternatives=alt)
                codes.append(out.codes.numpy())
                dists.append(out.distances[:, -1].numpy())
                alts.append(out.alternatives.numpy())
        return EncodedBatch(
            base_codes=np.concatenate(codes).astype(np.int64, copy=False),
            distances=np.concatenate(dists).astype(np.float32, copy=False),
            alternatives=np.concatenate(alts).astype(np.int64, copy=False),
        )

    def vectors(self, codes: np.ndarray) -> np.ndarray:
        """The quantized latent of base codes [N, L]: what the FAISS index holds for nearest-ID queries."""
        with torch.inference_mode():
            out = self.tokenizer.decode_latent(torch.from_numpy(np.ascontiguousarray(codes, dtype=np.int64)))
        return np.ascontiguousarray(out.numpy(), dtype=np.float32)
