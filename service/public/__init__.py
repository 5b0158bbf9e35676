"""semid: semantic IDs for generative recommenders.

The public Python API, pinned in ``__all__``; everything else under ``semid.model`` and ``semid.service``
is internal and may change between releases.

- :func:`train` fits a tokenizer (RQ-VAE or RQ-KMeans) on item embeddings and writes a checkpoint.
- :class:`Tokenizer` loads a checkpoint and turns embeddings into base codes.
- :class:`Index` is the collision-free, append-only ID index: ``assign``, ``lookup``, ``prefix``,
  ``children``, ``resolve``, ``snapshot``, and the ``trie``/``vocab`` for constrained decoding.
- :mod:`semid.generation` is the client-side decoding kit (``SemanticIdTrie``, ``SemanticIdVocab``,
  ``semid.generation.hf``); it needs numpy only.

Example (a tiny synthetic catalog; real catalogs come from :func:`read_catalog`):

>>> import numpy as np, semid, tempfile
>>> x = np.random.default_rng(0).normal(size=(300, 16)).astype("float32")
>>> work = tempfile.mkdtemp()
>>> tok = semid.train(x, f"{work}/ckpt", tokenizer="rqkmeans", levels=2, codebook_size=8, progress=False)
>>> tok.encode(x[:2]).shape
(2, 2)
>>> index = semid.Index.create(f"{work}/idx", tok)
>>> ids = index.assign(np.arange(300), x).semantic_ids
>>> index.lookup(7)["semantic_id"] == ids[7].tolist()
True

The names load on first use, so ``import semid.generation`` does not import torch, FAISS or the server.
"""

from __future__ import annotations

if __name__ != "semid":  # the folder service/public/ is also reachable as semid.service.public: one name only
    raise ImportError(f"import semid, not {__name__}")

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("semid")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "Catalog",
    "Index",
    "PrefixPage",
    "SemidConfig",
    "SemidError",
    "Tokenizer",
    "__version__",
    "generation",
    "read_catalog",
    "train",
]

if TYPE_CHECKING:
    from semid import generation
    from semid.index import Index, PrefixPage
    from semid.model.config import SemidConfig
    from semid.model.data.catalog import Catalog, read_catalog
    from semid.service.errors import SemidError
    from semid.tokenizer import Tokenizer, train

# name -> module holding it; imported on first access (PEP 562), with the extra its dependencies come from
_EXTRA = {
    "semid.index": "serve",
    "semid.tokenizer": "train",
    "semid.model.data.catalog": "train",
    "semid.model.config": "train",
}
_LAZY = {
    "Catalog": "semid.model.data.catalog",
    "read_catalog": "semid.model.data.catalog",
    "SemidConfig": "semid.model.config",
    "SemidError": "semid.service.errors",
    "Index": "semid.index",
    "PrefixPage": "semid.index",
    "Tokenizer": "semid.tokenizer",
    "train": "semid.tokenizer",
}


def __getattr__(name: str) -> Any:
    if name == "generation":
        return importlib.import_module("semid.generation")
    if name in _LAZY:
        module = _LAZY[name]
        try:
            value = getattr(importlib.import_module(module), name)
        except ModuleNotFoundError as err:
            if err.name is None or err.name.split(".")[0] == "semid" or module not in _EXTRA:
                raise
            extra = _EXTRA[module]
            raise ImportError(f"semid.{name} needs the {extra} extra: pip install 'semid[{extra}]' ({err})") from err
        globals()[name] = value
        return value
    raise AttributeError(f"module 'semid' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
