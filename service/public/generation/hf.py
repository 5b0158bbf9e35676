"""Hugging Face ``generate()`` adapters that keep every beam on a real item's semantic ID.

``pip install 'semid[hf]'`` (adds transformers). ``SemanticIdLogitsProcessor(trie, vocab, prompt_length=T)``
masks a whole batch of beams at once; ``prefix_allowed_tokens_fn(trie, vocab, prompt_length=T)`` is the
per-beam callable ``generate()`` also takes; ``generated_semantic_ids(vocab, sequences, prompt_length=T)``
turns the generated rows back into semantic IDs. ``T`` is the (left-padded) prompt length for a decoder-only
model, 1 for an encoder-decoder (the decoder start token).

.. code-block:: python

    from transformers import LogitsProcessorList
    from semid.generation import SemanticIdTrie, SemanticIdVocab
    from semid.generation.hf import SemanticIdLogitsProcessor, generated_semantic_ids

    trie, vocab = SemanticIdTrie.load("trie.npz"), SemanticIdVocab.load("vocab.json")
    prompt = inputs["input_ids"].shape[1]
    out = model.generate(**inputs, num_beams=10, num_return_sequences=10, max_new_tokens=vocab.width + 1,
                         eos_token_id=vocab.eos_id, pad_token_id=vocab.pad_id,
                         logits_processor=LogitsProcessorList([SemanticIdLogitsProcessor(trie, vocab,
                                                                                         prompt_length=prompt)]))
    items = trie.items_of(generated_semantic_ids(vocab, out, prompt_length=prompt))

Importing this module does not import transformers; ``SemanticIdLogitsProcessor`` does, on first access
(an ``ImportError`` saying how to install it when it is missing).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from semid.service.generation import hf as _hf
from semid.service.generation.hf import generated_semantic_ids, prefix_allowed_tokens_fn, require_transformers

if TYPE_CHECKING:
    from semid.service.generation.hf import SemanticIdLogitsProcessor

__all__ = ["SemanticIdLogitsProcessor", "generated_semantic_ids", "prefix_allowed_tokens_fn", "require_transformers"]


def __getattr__(name: str) -> Any:
    if name == "SemanticIdLogitsProcessor":
        return _hf.SemanticIdLogitsProcessor  # made (a transformers subclass) on first access
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
