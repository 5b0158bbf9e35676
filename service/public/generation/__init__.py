"""Constrained decoding for generative recommenders: the exact trie of valid semantic IDs and their tokens.

Needs numpy only (no torch, FAISS or server dependencies): ``pip install semid`` then, for the Hugging Face
adapters, ``pip install 'semid[hf]'`` (adds transformers) and :mod:`semid.generation.hf`.

>>> import numpy as np
>>> from semid.generation import IdLayout, SemanticIdTrie, SemanticIdVocab
>>> sids = np.array([[0, 1, 0], [0, 2, 0], [3, 1, 0]])
>>> trie = SemanticIdTrie.from_semantic_ids(sids, ["a", "b", "c"], sizes=(4, 4, 2))
>>> trie.allowed_next([0])
[1, 2]
>>> trie.item_of([3, 1, 0])
'c'
>>> vocab = SemanticIdVocab.for_layout(IdLayout(codebook_sizes=(4, 4), dedup_size=2))
>>> vocab.to_strings(sids[:1])
['<a_0><b_1><c_0>']
>>> vocab.to_flat(sids[:1]).tolist()
[[0, 5, 8]]

From a semid index: ``semid.Index.open(dir).trie()`` / ``.vocab()``, or the files ``semid export --trie
--vocab`` writes (``SemanticIdTrie.load``, ``SemanticIdVocab.load``), or ``GET /v1/trie`` of a server
(``SemanticIdTrie.from_bytes``).
"""

from semid.service.generation.trie import InvalidTrieError, SemanticIdTrie
from semid.service.generation.vocab import InvalidVocabError, SemanticIdVocab
from semid.service.ids.layout import IdLayout

__all__ = ["IdLayout", "InvalidTrieError", "InvalidVocabError", "SemanticIdTrie", "SemanticIdVocab"]
