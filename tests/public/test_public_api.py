"""The public API, used as a newcomer would: only names reachable from `import semid`.

train -> assign -> trie -> constrained decoding on a tiny seeded catalog, the pinned `__all__`, and the
errors a wrong call gets."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import semid
import semid.generation
import semid.generation.hf

TINY = {
    "levels": 2,
    "codebook_size": 8,
    "hidden_dims": (32,),
    "latent_dim": 8,
    "epochs": 4,
    "batch_size": 64,
    "kmeans_iters": 5,
    "ae_warmup_epochs": 1,
    "warmup_epochs": 1,
    "beta_warmup_epochs": 1,
    "seed": 0,
}


def tiny_catalog(n: int = 240, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Items around 12 cluster centres (clustered, so codes crowd and the dedup digit is exercised)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, dim))
    x = centres[rng.integers(0, 12, n)] + 0.05 * rng.normal(size=(n, dim))
    return np.arange(1000, 1000 + n), x.astype(np.float32)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    work = tmp_path_factory.mktemp("public")
    item_ids, x = tiny_catalog()
    tok = semid.train(x, work / "ckpt", progress=False, **TINY)
    index = semid.Index.create(work / "idx", tok)
    assigned = index.assign(item_ids, x)
    return work, item_ids, x, tok, index, assigned


def test_the_public_names_are_pinned():
    assert semid.__all__ == [
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
    for name in semid.__all__:
        assert getattr(semid, name) is not None, name
    assert semid.generation.__all__ == [
        "IdLayout",
        "InvalidTrieError",
        "InvalidVocabError",
        "SemanticIdTrie",
        "SemanticIdVocab",
    ]
    assert semid.generation.hf.__all__ == [
        "SemanticIdLogitsProcessor",
        "generated_semantic_ids",
        "prefix_allowed_tokens_fn",
        "require_transformers",
    ]
    from importlib.metadata import version

    assert semid.__version__ == version("semid")
    with pytest.raises(AttributeError, match="no attribute 'assign_catalog'"):
        semid.assign_catalog  # noqa: B018


def test_train_then_encode_with_the_loaded_tokenizer(built, tmp_path):
    work, item_ids, x, tok, _, _ = built
    again = semid.Tokenizer.load(work / "ckpt")
    assert again.fingerprint == tok.fingerprint
    assert (again.levels, again.codebook_size, again.input_dim) == (2, 8, 16)
    codes = again.encode(x)
    assert codes.shape == (len(x), 2) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < 8
    assert np.array_equal(codes, tok.encode(x))
    assert again.config.train.epochs == TINY["epochs"]
    rq = semid.train(x, tmp_path / "km", tokenizer="rqkmeans", levels=2, codebook_size=4, progress=False)
    assert rq.config.model.tokenizer == "rqkmeans" and rq.encode(x[:3]).max() < 4


def test_assign_gives_unique_stable_ids_and_the_reads_agree(built):
    work, item_ids, x, tok, index, assigned = built
    sids = assigned.semantic_ids
    assert sids.shape == (len(x), 3)  # two levels and the dedup digit
    assert len({tuple(s) for s in sids.tolist()}) == len(x)
    assert not assigned.existing.any() and len(index) == len(x)
    base = tok.encode(x)
    records = [index.lookup(int(i)) for i in item_ids]
    assert np.array_equal([r["base_code"] for r in records], base)
    own = ~np.array([r["fallback"] for r in records])  # items placed under their own base code
    assert own.any() and np.array_equal(sids[own, :2], base[own])  # then the dedup digit

    reopened = semid.Index.open(work / "idx")
    assert reopened.fingerprint == tok.fingerprint
    again = reopened.assign(item_ids[:50], x[:50])  # known items keep their IDs
    assert again.existing.all() and np.array_equal(again.semantic_ids, sids[:50]) and again.segment is None

    item = reopened.lookup(int(item_ids[7]))
    assert item["semantic_id"] == sids[7].tolist() and item["item_id"] == item_ids[7]
    assert reopened.lookup_id(sids[7].tolist())["item_id"] == item_ids[7]
    first = int(sids[7, 0])
    page = reopened.prefix([first], limit=5)
    under = int((sids[:, 0] == first).sum())
    assert page.count == under and len(page.items) == min(5, under)
    assert all(it["semantic_id"][0] == first for it in page.items)
    if under > 5:
        rest = reopened.prefix([first], limit=1000, after=page.next_cursor)
        assert len(rest.items) == under - 5 and rest.next_cursor is None
    children = reopened.children()
    assert sum(n for _, n in children) == len(x)
    assert dict(children)[first] == under
    resolved = reopened.resolve(sids[7].tolist(), k=3)
    assert resolved.exact is not None and resolved.exact["item_id"] == item_ids[7]
    assert len(resolved.nearest) == 3
    assert reopened.snapshot.get_item(int(item_ids[7]))["semantic_id"] == sids[7].tolist()


def beam_search(trie, vocab, scores: np.ndarray, beams: int) -> np.ndarray:
    """A toy generator: fixed per-position token scores, beam search masked by the trie at every step."""
    seqs = np.zeros((1, 0), dtype=np.int64)
    totals = np.zeros(1)
    for pos in range(vocab.width):
        mask = trie.allowed_next_batch(seqs)  # [B, max(sizes) + 1] over codes (and the end token)
        size = vocab.sizes[pos]
        step = np.where(mask[:, :size], scores[pos, :size][None, :], -np.inf) + totals[:, None]
        flat = np.argsort(-step, axis=None)[:beams]
        flat = flat[np.isfinite(step.reshape(-1)[flat])]
        rows, codes = np.divmod(flat, size)
        seqs = np.concatenate([seqs[rows], codes[:, None]], axis=1)
        totals = step.reshape(-1)[flat]
    assert trie.allowed_next_batch(seqs)[:, trie.end_token].all()  # every beam is a complete ID
    return seqs


def test_trie_and_constrained_decoding_only_reach_real_items(built, tmp_path):
    _, item_ids, _, _, index, assigned = built
    trie = index.trie()
    assert isinstance(trie, semid.generation.SemanticIdTrie)
    assert len(trie) == len(item_ids)
    vocab = index.vocab(special_tokens=True)
    assert vocab.sizes == trie.sizes and vocab.eos_id is not None
    scores = np.random.default_rng(1).normal(size=(vocab.width, max(vocab.sizes)))
    seqs = beam_search(trie, vocab, scores, beams=6)
    assert len(seqs) == 6 and len({tuple(s) for s in seqs.tolist()}) == 6
    items = trie.items_of(seqs)
    assert set(items.tolist()) <= set(item_ids.tolist())
    # the same round trip through the files `semid export` writes, and the vocab's flat token ids
    trie.save(tmp_path / "trie.npz")
    vocab.save(tmp_path / "vocab.json")
    loaded = semid.generation.SemanticIdTrie.load(tmp_path / "trie.npz")
    flat = semid.generation.SemanticIdVocab.load(tmp_path / "vocab.json").to_flat(seqs)
    assert np.array_equal(loaded.items_of(vocab.from_flat(flat)), items)
    taken = {tuple(s) for s in assigned.semantic_ids.tolist()}
    free = next(s for s in itertools.product(*map(range, trie.sizes)) if s not in taken)
    assert not loaded.is_valid(free) and loaded.items_of(np.array([free]), missing=-1).tolist() == [-1]


def test_hugging_face_beams_through_the_public_names(built):
    transformers = pytest.importorskip(
        "transformers", reason="transformers is not installed: the hf extra (pip install 'semid[hf]') is needed"
    )
    import torch

    _, item_ids, _, _, index, _ = built
    trie, vocab = index.trie(), index.vocab(offset=5, special_tokens=True)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=vocab.end, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                                bos_token_id=vocab.bos_id, eos_token_id=vocab.eos_id, pad_token_id=vocab.pad_id)
    ).eval()  # fmt: skip
    prompt = torch.tensor([[1, 2, 3]])
    processor = semid.generation.hf.SemanticIdLogitsProcessor(trie, vocab, prompt_length=3)
    with torch.no_grad():
        out = model.generate(
            input_ids=prompt, attention_mask=torch.ones_like(prompt), num_beams=4, num_return_sequences=4,
            do_sample=False, max_new_tokens=vocab.width + 1, eos_token_id=vocab.eos_id, pad_token_id=vocab.pad_id,
            logits_processor=transformers.LogitsProcessorList([processor]),
        )  # fmt: skip
    sids = semid.generation.hf.generated_semantic_ids(vocab, out, prompt_length=3)
    assert set(trie.items_of(sids).tolist()) <= set(item_ids.tolist())


def test_wrong_calls_get_errors_naming_the_problem(built, tmp_path):
    work, item_ids, x, tok, index, _ = built
    with pytest.raises(TypeError, match="unknown config fields \\['levles'\\]"):
        semid.train(x, tmp_path / "c", levles=2)
    with pytest.raises(ValueError, match="codebook_size"):
        semid.train(x, tmp_path / "c", codebook_size=1)
    with pytest.raises(ValueError, match="id_kind"):
        semid.Index.create(tmp_path / "i", tok, id_kind="uuid")
    with pytest.raises(semid.SemidError):
        semid.Index.open(tmp_path / "missing")
    with pytest.raises(KeyError):
        index.lookup(-1)
    with pytest.raises(ValueError, match="dimension 3"):
        tok.encode(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="item_ids repeats"):
        index.assign([5, 5], x[:2])


def test_the_docstring_examples_run():
    import doctest

    import semid.index
    import semid.tokenizer

    for module, examples in ((semid, 7), (semid.generation, 6), (semid.tokenizer, 0), (semid.index, 0)):
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0 and result.attempted >= examples, module.__name__
