"""The Hugging Face adapters with tiny randomly initialised models built from configs (nothing downloaded):
every returned beam is a real item, for decoder-only (left-padded prompts) and encoder-decoder models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semid.service.generation.hf import generated_semantic_ids, prefix_allowed_tokens_fn
from semid.service.generation.trie import SemanticIdTrie
from semid.service.generation.vocab import SemanticIdVocab
from semid.service.ids.layout import IdLayout

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed: the hf extra (pip install 'semid[hf]') is needed"
)

LAYOUT = IdLayout(codebook_sizes=(4, 4, 4), dedup_size=3)
TEXT_TOKENS = 10  # prompt tokens 0..9; the semantic-ID block is appended after them
BEAMS = 4


@pytest.fixture(scope="module")
def catalog():
    """40 items crowded into few prefixes, so most tuples are not items."""
    rng = np.random.default_rng(3)
    sids = np.unique(
        np.stack([rng.integers(0, s, 60) % (2 if p == 1 else s) for p, s in enumerate(LAYOUT.sizes)], 1), axis=0
    )
    trie = SemanticIdTrie.from_semantic_ids(sids, np.arange(sids.shape[0]) + 500, sizes=LAYOUT.sizes)
    vocab = SemanticIdVocab.for_layout(LAYOUT, offset=TEXT_TOKENS, special_tokens=True)
    return trie, vocab


def left_padded_prompts(vocab, lengths=(3, 6, 5)):
    rng = np.random.default_rng(0)
    width = max(lengths)
    ids = np.full((len(lengths), width), vocab.pad_id)
    mask = np.zeros((len(lengths), width), dtype=np.int64)
    for row, n in enumerate(lengths):
        ids[row, width - n :] = rng.integers(0, TEXT_TOKENS, n)
        mask[row, width - n :] = 1
    return torch.as_tensor(ids), torch.as_tensor(mask)


def gpt2(vocab):
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=vocab.end, n_positions=32, n_embd=32, n_layer=2, n_head=2,
        bos_token_id=vocab.bos_id, eos_token_id=vocab.eos_id, pad_token_id=vocab.pad_id,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config).eval()


def t5(vocab):
    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=vocab.end, d_model=32, d_ff=64, d_kv=16, num_layers=2, num_decoder_layers=2, num_heads=2,
        decoder_start_token_id=vocab.bos_id, eos_token_id=vocab.eos_id, pad_token_id=vocab.pad_id,
    )  # fmt: skip
    return transformers.T5ForConditionalGeneration(config).eval()


def run(model, vocab, ids, mask, **kwargs):
    with torch.no_grad():
        return model.generate(
            input_ids=ids, attention_mask=mask, num_beams=BEAMS, num_return_sequences=BEAMS, do_sample=False,
            max_new_tokens=vocab.width + 1, eos_token_id=vocab.eos_id, pad_token_id=vocab.pad_id, **kwargs,
        )  # fmt: skip


def assert_real_items(trie, vocab, out, prompt_length, batch):
    assert out.shape[0] == batch * BEAMS
    sids = generated_semantic_ids(vocab, out, prompt_length=prompt_length)
    items = trie.items_of(sids)
    assert (items >= 500).all(), f"beams off the catalog: {sids[items < 0].tolist()}"
    assert (out[:, prompt_length + vocab.width] == vocab.eos_id).all()  # the end token right after the ID
    for row in range(batch):  # the beams of one prompt are distinct items
        assert len(set(items[row * BEAMS : (row + 1) * BEAMS].tolist())) == BEAMS


@pytest.mark.parametrize("adapter", ["processor", "prefix_fn"])
def test_decoder_only_left_padded_beams_are_real_items(catalog, adapter):
    from semid.service.generation.hf import SemanticIdLogitsProcessor

    trie, vocab = catalog
    model = gpt2(vocab)
    ids, mask = left_padded_prompts(vocab)
    prompt = ids.shape[1]
    if adapter == "processor":
        proc = SemanticIdLogitsProcessor(trie, vocab, prompt_length=prompt)
        assert isinstance(proc, transformers.LogitsProcessor)
        out = run(model, vocab, ids, mask, logits_processor=transformers.LogitsProcessorList([proc]))
    else:
        out = run(
            model,
            vocab,
            ids,
            mask,
            prefix_allowed_tokens_fn=prefix_allowed_tokens_fn(trie, vocab, prompt_length=prompt),
        )
    assert torch.equal(out[:, :prompt], ids.repeat_interleave(BEAMS, 0))
    assert_real_items(trie, vocab, out, prompt, ids.shape[0])


def test_without_the_constraint_the_same_model_emits_non_items(catalog):
    """The check above can fail: unconstrained, this random model leaves the catalog."""
    trie, vocab = catalog
    ids, mask = left_padded_prompts(vocab)
    out = run(gpt2(vocab), vocab, ids, mask)
    assert (trie.items_of(generated_semantic_ids(vocab, out, prompt_length=ids.shape[1])) < 0).any()


@pytest.mark.parametrize("adapter", ["processor", "prefix_fn"])
def test_encoder_decoder_beams_are_real_items(catalog, adapter):
    from semid.service.generation.hf import SemanticIdLogitsProcessor

    trie, vocab = catalog
    ids, mask = left_padded_prompts(vocab)
    if adapter == "processor":
        proc = SemanticIdLogitsProcessor(trie, vocab, prompt_length=1)  # the decoder start token
        out = run(t5(vocab), vocab, ids, mask, logits_processor=transformers.LogitsProcessorList([proc]))
    else:
        fn = prefix_allowed_tokens_fn(trie, vocab, prompt_length=1)
        out = run(t5(vocab), vocab, ids, mask, prefix_allowed_tokens_fn=fn)
    assert (out[:, 0] == vocab.bos_id).all()
    assert_real_items(trie, vocab, out, 1, ids.shape[0])


def test_processor_masks_each_beam_exactly(catalog):
    from semid.service.generation.hf import SemanticIdLogitsProcessor

    trie, vocab = catalog
    sid = trie.semantic_ids[5]
    flat = vocab.to_flat(sid)
    proc = SemanticIdLogitsProcessor(trie, vocab, prompt_length=2)
    size = vocab.end + 3  # a model vocabulary larger than ours
    prompt = [[vocab.pad_id, 1], [2, 3]]
    for depth in range(vocab.width + 2):
        gen = list(flat[:depth]) if depth <= vocab.width else [*flat, vocab.eos_id]
        input_ids = torch.as_tensor([p + gen for p in prompt])
        scores = torch.zeros(2, size)
        out = proc(input_ids, scores)
        allowed = [np.flatnonzero(torch.isfinite(row).numpy()).tolist() for row in out]
        assert allowed[0] == allowed[1]
        if depth < vocab.width:
            expected = [int(vocab.level_offsets[depth]) + c for c in trie.allowed_next(sid[:depth])]
        elif depth == vocab.width:
            expected = [vocab.eos_id]
        else:
            expected = sorted({vocab.eos_id, vocab.pad_id})
        assert allowed[0] == expected, depth
    # a token of the wrong level makes the beam dead: it may only end
    wrong = torch.as_tensor([[0, 0, int(vocab.level_offsets[1])]])
    assert np.flatnonzero(torch.isfinite(proc(wrong, torch.zeros(1, size))).numpy()).tolist() == [vocab.eos_id]


def test_adapters_refuse_a_mismatched_setup(catalog):
    trie, vocab = catalog
    plain = SemanticIdVocab.for_layout(LAYOUT)
    with pytest.raises(ValueError, match="eos"):
        prefix_allowed_tokens_fn(trie, plain, prompt_length=0)
    other = SemanticIdVocab.for_layout(IdLayout(codebook_sizes=(4, 4, 4), dedup_size=4), special_tokens=True)
    with pytest.raises(ValueError, match="sizes"):
        prefix_allowed_tokens_fn(trie, other, prompt_length=0)
    from semid.service.generation.hf import SemanticIdLogitsProcessor

    with pytest.raises(ValueError, match="cover"):
        SemanticIdLogitsProcessor(trie, vocab, prompt_length=0)(torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 20))


def test_missing_transformers_is_a_clear_import_error(monkeypatch):
    import semid.service.generation.hf as hf

    monkeypatch.setattr(hf, "_processor_class", None)
    monkeypatch.setitem(__import__("sys").modules, "transformers", None)
    with pytest.raises(ImportError, match=r"semid\[hf\]"):
        hf.SemanticIdLogitsProcessor  # noqa: B018
