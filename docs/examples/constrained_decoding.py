"""Constrained decoding with semid's trie and vocab: every beam a generative recommender returns is a real item.

    .venv/bin/pip install -e ".[hf]"          # transformers
    .venv/bin/semid export --index idx/ --out semantic_ids.parquet --vocab vocab.json --trie trie.npz --special-tokens
    .venv/bin/python docs/examples/constrained_decoding.py trie.npz vocab.json semantic_ids.parquet

The model is a tiny GPT-2 built from a config with random weights (nothing is downloaded), so its picks are
arbitrary; the point is the plumbing around ``generate()``. Swap in your trained model: its vocabulary must hold
the vocab's flat ids (``vocab_size >= vocab.end``; export with ``--vocab-offset N`` to append the semantic-ID
tokens after an LLM's N tokens).
"""

from __future__ import annotations

import sys

import numpy as np
import pyarrow.parquet as pq
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LogitsProcessorList

from semid.service.generation.hf import SemanticIdLogitsProcessor, generated_semantic_ids
from semid.service.generation.trie import SemanticIdTrie
from semid.service.generation.vocab import SemanticIdVocab


def main(trie_path: str, vocab_path: str, export_path: str, beams: int = 5) -> np.ndarray:
    trie = SemanticIdTrie.load(trie_path)
    vocab = SemanticIdVocab.load(vocab_path)  # exported with --special-tokens: pad, bos and eos ids
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab.end, n_positions=64, n_embd=32, n_layer=2, n_head=2)).eval()

    # Two users' histories: the semantic IDs of the items they saw, oldest first (here: rows of the export).
    sids = np.array(pq.read_table(export_path, columns=["semantic_id"]).column("semantic_id").to_pylist())
    histories = [sids[:3], sids[3:4]]  # histories of different lengths -> left padding

    # history -> prompt: bos, then each item's flat token ids; left-padded with pad_id and an attention mask,
    # so every prompt ends where generation starts.
    prompts = [[vocab.bos_id, *vocab.to_flat(h).ravel().tolist()] for h in histories]
    length = max(map(len, prompts))
    input_ids = torch.tensor([[vocab.pad_id] * (length - len(p)) + p for p in prompts])
    attention_mask = torch.tensor([[0] * (length - len(p)) + [1] * len(p) for p in prompts])

    constrain = SemanticIdLogitsProcessor(trie, vocab, prompt_length=length)
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        num_beams=beams,
        num_return_sequences=beams,
        max_new_tokens=vocab.width + 1,  # one token per ID position, then eos
        eos_token_id=vocab.eos_id,
        pad_token_id=vocab.pad_id,
        do_sample=False,
        logits_processor=LogitsProcessorList([constrain]),
    )
    generated = generated_semantic_ids(vocab, out, prompt_length=length)
    items = trie.items_of(generated)  # -1 would mark a beam that is not an item: the trie never allows one
    for user in range(len(histories)):
        picks = items[user * beams : (user + 1) * beams]
        print(f"user {user}: items {picks.tolist()}  first ID {vocab.to_string(generated[user * beams])}")  # noqa: T201 - an example prints its result
    return items


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: constrained_decoding.py trie.npz vocab.json semantic_ids.parquet")
    main(*sys.argv[1:])
