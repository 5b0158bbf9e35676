"""Hugging Face ``generate()`` adapters: constrain every beam to the trie's valid semantic IDs.

Install with ``pip install 'semid[hf]'``. ``SemanticIdLogitsProcessor`` (a ``transformers.LogitsProcessor``)
masks the scores of a whole batch of beams at once; ``prefix_allowed_tokens_fn`` makes the per-beam
callable ``generate(prefix_allowed_tokens_fn=...)`` takes. Both read the generated suffix of each row,
``input_ids[:, prompt_length:]``: for a decoder-only model the (left-padded) prompt length, for an
encoder-decoder model 1 (the decoder start token). That suffix, mapped through the vocab, is the
semantic ID so far; the next token must be one of the trie's allowed codes at that position, the eos
token once the ID is complete, and only eos or pad after that. A beam whose suffix is no ID's prefix
(only possible when more beams are kept than IDs exist; its score is already -inf) may only end.
Nothing is ever left unconstrained.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from semid.service.generation.trie import SemanticIdTrie
from semid.service.generation.vocab import SemanticIdVocab


def require_transformers() -> Any:
    """``transformers``, or an ImportError saying how to install it."""
    try:
        import transformers
    except ImportError as err:
        raise ImportError(
            "the Hugging Face adapters need transformers: pip install 'semid[hf]' (or transformers>=4.40)"
        ) from err
    return transformers


class _Constraint:
    """Which token ids may follow each row of generated ids (shared by both adapters)."""

    def __init__(
        self,
        trie: SemanticIdTrie,
        vocab: SemanticIdVocab,
        *,
        prompt_length: int,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
    ) -> None:
        if trie.sizes != vocab.sizes:
            raise ValueError(f"the trie's sizes {trie.sizes} differ from the vocab's {vocab.sizes}")
        if prompt_length < 0:
            raise ValueError(f"prompt_length is {prompt_length}; expected >= 0")
        eos = vocab.eos_id if eos_token_id is None else int(eos_token_id)
        if eos is None:
            raise ValueError(
                "no eos token: export the vocab with `semid export --special-tokens` (Python: "
                "SemanticIdVocab.for_layout(..., special_tokens=True)), or pass eos_token_id"
            )
        pad = vocab.pad_id if pad_token_id is None else int(pad_token_id)
        self.trie, self.vocab, self.prompt_length = trie, vocab, int(prompt_length)
        self.eos, self.pad = eos, eos if pad is None else pad

    def allowed(self, input_ids: np.ndarray, vocab_size: int) -> np.ndarray:
        """bool ``[B, vocab_size]`` for ``input_ids [B, T]`` (one row per beam)."""
        if self.vocab.end > vocab_size or max(self.eos, self.pad) >= vocab_size:
            raise ValueError(f"the model's {vocab_size} tokens do not cover the vocab's ids (up to {self.vocab.end})")
        batch = input_ids.shape[0]
        generated = input_ids[:, self.prompt_length :]
        depth = generated.shape[1]
        out = np.zeros((batch, vocab_size), dtype=bool)
        width = self.trie.width
        if depth > width:  # the ID is complete and ended: nothing but eos / pad
            out[:, [self.eos, self.pad]] = True
            return out
        mask = self.trie.allowed_next_batch(self.vocab.codes_of_flat(generated))
        if depth < width:
            lo, size = int(self.vocab.level_offsets[depth]), self.trie.sizes[depth]
            out[:, lo : lo + size] = mask[:, :size]
        else:
            out[:, self.eos] = mask[:, self.trie.end_token]
        out[~mask.any(axis=1), self.eos] = True  # a dead beam (score -inf already) may only end
        return out


class _LogitsMasking(_Constraint):
    """The ``LogitsProcessor`` body: scores of disallowed tokens become -inf."""

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        allowed = self.allowed(input_ids.detach().cpu().numpy(), scores.shape[-1])
        keep = torch.from_numpy(allowed).to(scores.device)
        return scores.masked_fill(~keep, float("-inf"))


def prefix_allowed_tokens_fn(
    trie: SemanticIdTrie,
    vocab: SemanticIdVocab,
    *,
    prompt_length: int,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> Callable[[int, Any], list[int]]:
    """``fn(batch_id, input_ids) -> allowed token ids`` for ``generate(prefix_allowed_tokens_fn=fn)``;
    never empty. (The batched ``SemanticIdLogitsProcessor`` is faster with many beams.)"""
    constraint = _Constraint(
        trie, vocab, prompt_length=prompt_length, eos_token_id=eos_token_id, pad_token_id=pad_token_id
    )
    vocab_size = max(vocab.end, constraint.eos, constraint.pad) + 1

    def allowed_tokens(batch_id: int, input_ids: Any) -> list[int]:
        ids = np.asarray(input_ids.detach().cpu() if hasattr(input_ids, "detach") else input_ids).reshape(1, -1)
        return np.flatnonzero(constraint.allowed(ids, vocab_size)[0]).tolist()

    return allowed_tokens


def generated_semantic_ids(vocab: SemanticIdVocab, sequences: Any, *, prompt_length: int) -> np.ndarray:
    """int64 ``[B, W]``: the semantic ID each output row of ``generate()`` spells after its prompt, -1 where
    a position holds no code of that level (map to items with ``trie.items_of``)."""
    arr = np.asarray(sequences.detach().cpu() if hasattr(sequences, "detach") else sequences)
    generated = arr[:, prompt_length : prompt_length + vocab.width]
    codes = np.full((arr.shape[0], vocab.width), -1, dtype=np.int64)
    codes[:, : generated.shape[1]] = vocab.codes_of_flat(generated)
    return codes


_processor_class: type | None = None


def __getattr__(name: str) -> Any:
    """``SemanticIdLogitsProcessor`` subclasses ``transformers.LogitsProcessor``, so it is made on first use."""
    global _processor_class
    if name != "SemanticIdLogitsProcessor":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _processor_class is None:
        transformers = require_transformers()
        _processor_class = type(
            "SemanticIdLogitsProcessor",
            (_LogitsMasking, transformers.LogitsProcessor),
            {
                "__module__": __name__,
                "__doc__": "Masks the scores of every beam to the tokens that keep it on a real item's semantic "
                "ID: ``SemanticIdLogitsProcessor(trie, vocab, prompt_length=T, eos_token_id=None, "
                "pad_token_id=None)``; pass it in ``generate(logits_processor=LogitsProcessorList([...]))``.",
            },
        )
    return _processor_class
