"""A fast deterministic 64-bit hash of embedding rows.

Used to notice that an item's embedding changed since its ID was assigned. Each
row's float32 bits are read as uint32 words; word ``j`` is mixed with two
per-column odd constants, multiplied, folded, and the words are summed mod 2**64;
the sum goes through the splitmix64 finaliser. The constants come from splitmix64
of the column index, so hashes do not depend on NumPy's random generators and are
stable across versions and machines. Not a cryptographic hash.
"""

from __future__ import annotations

import numpy as np

_SEED = 0x5E31D_0001
_GOLDEN = 0x9E3779B97F4A7C15
_CHUNK_ROWS = 16384  # bounds the uint64 temporary to ~50 MB at D = 384


def embedding_hash(embeddings: np.ndarray) -> np.ndarray:
    """uint64 ``[N]`` hash of each row of a float32 ``[N, D]`` array (same bytes -> same hash)."""
    arr = np.ascontiguousarray(embeddings, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"embeddings has shape {arr.shape}; expected (N, D)")
    n, dim = arr.shape
    words = arr.view(np.uint32)
    mix_a = _column_constants(dim, stream=1)
    mix_b = _column_constants(dim, stream=2) | np.uint64(1)
    out = np.empty(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for start in range(0, n, _CHUNK_ROWS):
            block = words[start : start + _CHUNK_ROWS].astype(np.uint64)
            block ^= mix_a
            block *= mix_b
            block ^= block >> np.uint64(29)
            out[start : start + _CHUNK_ROWS] = block.sum(axis=1, dtype=np.uint64)
        out ^= np.uint64(dim)
        return _splitmix64(out)


def _column_constants(dim: int, *, stream: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        index = np.arange(dim, dtype=np.uint64) + np.uint64(stream * (1 << 32) + _SEED)
        return _splitmix64(index * np.uint64(_GOLDEN))


def _splitmix64(values: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = values + np.uint64(_GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))
