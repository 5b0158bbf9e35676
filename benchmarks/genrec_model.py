"""The generators of the generative-retrieval benchmark, in plain torch, trained from scratch.

- ``TigerGenerator``: TIGER's shape (Rajput et al. 2023): a T5-style encoder over the history's ID tokens and a
  decoder emitting the next item's W tokens (d_model 128, 4 + 4 layers, 6 heads of 64, feed-forward 1024,
  dropout 0.1 by default; learned absolute positions instead of T5's relative bias).
- ``SemanticGenerator`` ("small"): decoder-only. A user's history is the flat sequence of its items'
  W-token semantic IDs (token embedding per position-in-ID level, position embedding), a causal transformer,
  and one output head per level predicting the next token. Decoding: beam search over the W tokens of the
  next item, constrained by ``SemanticIdTrie`` (or not, to measure how often it invents IDs).
- ``ItemGenerator``: the SASRec-style baseline, the same transformer over item ids with a softmax over every
  catalog item (output tied to the item embedding).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

LR_DECAYS = ("constant", "cosine")


@dataclass(frozen=True)
class Budget:
    """What every generator gets, whatever its tokens."""

    epochs: int = 8  # the most epochs (early stopping on validation Recall@10 usually stops sooner)
    batch_size: int = 128  # windows (small, item-id) or examples (tiger) per step
    width: int = 64
    layers: int = 2  # per side for tiger
    heads: int = 2
    dropout: float = 0.1
    lr: float = 3e-3
    seed: int = 0
    ff: int | None = None  # feed-forward width (tiger; None: 4 x width)
    d_kv: int = 64  # per-head width (tiger)
    patience: int = 3  # evaluations without a better validation Recall@10 before stopping
    eval_every: int = 1  # epochs between validation evaluations
    budget_s: float | None = None  # cap on training in this process's CPU seconds (quick runs only)
    min_epochs: int = 0  # patience cannot stop training before this epoch (early plateaus)
    lr_decay: str = "constant"  # after the warm-up: "constant", or "cosine" (to 0 at the end of ``epochs``)

    def __post_init__(self) -> None:
        if self.lr_decay not in LR_DECAYS:
            raise ValueError(f"lr_decay must be one of {LR_DECAYS}, not {self.lr_decay!r}")


TIGER = dict(width=128, layers=4, heads=6, ff=1024, d_kv=64, dropout=0.1, lr=1e-3, batch_size=256, epochs=60)


class _Block(nn.Module):
    """Pre-norm causal self-attention block that can continue from cached keys and values."""

    def __init__(self, budget: Budget) -> None:
        super().__init__()
        d, self.heads = budget.width, budget.heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.drop = nn.Dropout(budget.dropout)

    def forward(self, x: torch.Tensor, past: tuple | None = None) -> tuple[torch.Tensor, tuple]:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if past is None:
            y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
            p = k.shape[2] - t  # new token i sees every cached key and the new ones up to itself
            mask = torch.ones(t, p + t, dtype=torch.bool).tril(diagonal=p)
            y = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.mlp(self.norm2(x))), (k, v)


class _Backbone(nn.Module):
    def __init__(self, vocab: int, positions: int, budget: Budget) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, budget.width)
        self.position = nn.Embedding(positions, budget.width)
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.position.weight, std=0.02)
        self.blocks = nn.ModuleList(_Block(budget) for _ in range(budget.layers))
        self.norm = nn.LayerNorm(budget.width)

    def forward(self, tokens: torch.Tensor, past: list | None = None) -> tuple[torch.Tensor, list]:
        """Hidden states of ``tokens`` [B, T], continuing after ``past`` (per-block cached keys/values)."""
        start = past[0][0].shape[2] if past else 0
        h = self.embed(tokens) + self.position(torch.arange(start, start + tokens.shape[1]))
        cache = []
        for i, block in enumerate(self.blocks):
            h, kv = block(h, past[i] if past else None)
            cache.append(kv)
        return self.norm(h), cache


class SemanticGenerator(nn.Module):
    """Decoder-only over flattened semantic IDs: token ``level * K + code`` at every position."""

    def __init__(self, width_ids: int, codes: int, max_items: int, budget: Budget) -> None:
        super().__init__()
        self.w, self.k = width_ids, codes
        self.pad = width_ids * codes
        self.backbone = _Backbone(self.pad + 1, max_items * width_ids, budget)
        self.heads = nn.Parameter(torch.randn(width_ids, budget.width, codes) / math.sqrt(budget.width))

    def tokens(self, sids: torch.Tensor) -> torch.Tensor:
        """[B, n, t] codes (t <= W; negative: padding) -> [B, n * t] flat tokens."""
        offsets = torch.arange(sids.shape[-1], device=sids.device) * self.k
        flat = sids + offsets
        return torch.where(sids < 0, torch.full_like(flat, self.pad), flat).flatten(1)

    def head(self, h: torch.Tensor, next_level: torch.Tensor) -> torch.Tensor:
        """Hidden states [M, d] -> logits [M, K] over the codes of each one's next level [M]."""
        out = h.new_empty(h.shape[0], self.k)
        for level in range(self.w):
            at = next_level == level
            out[at] = h[at] @ self.heads[level]
        return out

    def begin(self, history: torch.Tensor) -> tuple:
        """Run the history once: its cached keys/values and the state predicting the next item's level 0."""
        h, cache = self.backbone(self.tokens(history))
        return cache, h[:, -1]

    def step_logits(self, state: tuple, prefix: torch.Tensor) -> torch.Tensor:
        """Logits [B * n, K] of level ``step`` after each of the n beams' prefixes [B, n, step]."""
        cache, last = state
        b, n, step = prefix.shape
        if step:
            past = [(kc.repeat_interleave(n, dim=0), vc.repeat_interleave(n, dim=0)) for kc, vc in cache]
            h, _ = self.backbone(self.tokens(prefix.reshape(b * n, 1, step)), past)
            last = h[:, -1]
        return self.head(last, torch.full((last.shape[0],), step, dtype=torch.long))

    def loss(self, sids: torch.Tensor, learn: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of every token of the learned items given everything before it."""
        h, _ = self.backbone(self.tokens(sids))
        target = sids.flatten(1)[:, 1:]
        mask = learn.repeat_interleave(self.w, dim=1)[:, 1:] & (target >= 0)
        levels = ((torch.arange(target.shape[1]) + 1) % self.w).expand_as(target)
        return nn.functional.cross_entropy(self.head(h[:, :-1][mask], levels[mask]), target[mask])


class ItemGenerator(nn.Module):
    """SASRec-style next-item model: item-id tokens, a softmax over the catalog."""

    def __init__(self, items: int, max_items: int, budget: Budget) -> None:
        super().__init__()
        self.items = items
        self.backbone = _Backbone(items + 1, max_items, budget)

    def tokens(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.where(rows < 0, torch.full_like(rows, self.items), rows)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.backbone.embed.weight[: self.items].T

    def loss(self, rows: torch.Tensor, learn: torch.Tensor) -> torch.Tensor:
        h, _ = self.backbone(self.tokens(rows))
        target = rows[:, 1:]
        mask = learn[:, 1:] & (target >= 0)
        return nn.functional.cross_entropy(self.logits(h[:, :-1][mask]), target[mask])


class _Attention(nn.Module):
    """Multi-head attention with its own per-head width (T5: 6 heads of 64 over d_model 128)."""

    def __init__(self, budget: Budget) -> None:
        super().__init__()
        self.h, self.dk, self.p = budget.heads, budget.d_kv, budget.dropout
        inner = budget.heads * budget.d_kv
        self.q, self.kv = nn.Linear(budget.width, inner), nn.Linear(budget.width, 2 * inner)
        self.o = nn.Linear(inner, budget.width)

    def forward(self, x: torch.Tensor, mem: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False):
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.h, self.dk).transpose(1, 2)
        k, v = self.kv(mem).view(b, mem.shape[1], 2, self.h, self.dk).permute(2, 0, 3, 1, 4)
        p = self.p if self.training else 0.0
        y = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal)
        return self.o(y.transpose(1, 2).reshape(b, t, self.h * self.dk))

    def extend(self, x: torch.Tensor, past: tuple | None) -> tuple[torch.Tensor, tuple]:
        """Causal self-attention (no dropout: decoding) of one new token ``x`` [B, 1, d] to the cached keys
        and values of the tokens before it and itself; returns its output and the extended cache."""
        b = x.shape[0]
        q = self.q(x).view(b, 1, self.h, self.dk).transpose(1, 2)
        k, v = self.kv(x).view(b, 1, 2, self.h, self.dk).permute(2, 0, 3, 1, 4).unbind(0)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        y = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.o(y.transpose(1, 2).reshape(b, 1, self.h * self.dk)), (k, v)

    def memory(self, mem: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [B, h, T, dk] of a memory, computed once for every beam and step of a decode."""
        return self.kv(mem).view(mem.shape[0], mem.shape[1], 2, self.h, self.dk).permute(2, 0, 3, 1, 4).unbind(0)

    def attend(self, x: torch.Tensor, kv: tuple, mask: torch.Tensor, beams: int) -> torch.Tensor:
        """Cross-attention (no dropout: decoding) of ``x`` [B * beams, t, d] to the memory keys/values ``kv`` of
        its B histories: each history's beams join its query rows, so the memory is never repeated per beam."""
        bn, t, _ = x.shape
        b = bn // beams
        q = self.q(x).view(b, beams, t, self.h, self.dk).permute(0, 3, 1, 2, 4).reshape(b, self.h, beams * t, self.dk)
        y = nn.functional.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=mask)
        return self.o(y.view(b, self.h, beams, t, self.dk).permute(0, 2, 3, 1, 4).reshape(bn, t, self.h * self.dk))


class _TigerLayer(nn.Module):
    """Pre-norm T5-style layer: self-attention, cross-attention (decoder only), ReLU feed-forward."""

    def __init__(self, budget: Budget, cross: bool) -> None:
        super().__init__()
        d = budget.width
        self.self_attn = _Attention(budget)
        self.cross = _Attention(budget) if cross else None
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(3 if cross else 2))
        ff = budget.ff or 4 * d
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.ReLU(), nn.Dropout(budget.dropout), nn.Linear(ff, d))
        self.drop = nn.Dropout(budget.dropout)

    def forward(self, x, mask=None, mem=None, mem_mask=None, mem_kv=None, beams=1):
        """``mem_kv`` (decoding): this layer's cross-attention keys/values of the memory of ``x``'s histories,
        each history's ``beams`` rows of ``x`` in a row (``_Attention.attend``)."""
        h = self.norms[0](x)
        x = x + self.drop(self.self_attn(h, h, mask, causal=self.cross is not None))
        if self.cross is not None:
            if mem_kv is not None:
                x = x + self.drop(self.cross.attend(self.norms[1](x), mem_kv, mem_mask, beams))
            else:
                x = x + self.drop(self.cross(self.norms[1](x), mem, mem_mask))
        return x + self.drop(self.ff(self.norms[-1](x)))

    def step(self, x, past, mem_kv, mem_mask, beams):
        """Decoder layer on one new token per beam ``x`` [B * beams, 1, d] (decoding: no dropout), with the
        cached self-attention keys/values ``past`` of the tokens before it; returns it and the new cache."""
        y, cache = self.self_attn.extend(self.norms[0](x), past)
        x = x + y
        x = x + self.cross.attend(self.norms[1](x), mem_kv, mem_mask, beams)
        return x + self.ff(self.norms[-1](x)), cache


class TigerGenerator(nn.Module):
    """Encoder over the history's flat ID tokens (``level * K + code``), decoder emitting the next item's W
    tokens after a start token; one output head per level. Embeddings are shared by encoder and decoder.

    With ``user_buckets`` > 0 the encoder input starts with a user token (TIGER: the user id hashed into
    buckets, ``genrec_data.user_buckets``): its own embedding table, no position (it is first whatever the
    history's length), never masked. With 0 (the default) the model and its initialisation are unchanged."""

    def __init__(self, width_ids: int, codes: int, max_items: int, budget: Budget, user_buckets: int = 0) -> None:
        super().__init__()
        self.w, self.k = width_ids, codes
        self.pad, self.bos = width_ids * codes, width_ids * codes + 1
        d = budget.width
        self.embed = nn.Embedding(self.pad + 2, d)
        self.enc_pos, self.dec_pos = nn.Embedding(max_items * width_ids, d), nn.Embedding(width_ids, d)
        for e in (self.embed, self.enc_pos, self.dec_pos):
            nn.init.normal_(e.weight, std=0.02)
        self.encoder = nn.ModuleList(_TigerLayer(budget, cross=False) for _ in range(budget.layers))
        self.decoder = nn.ModuleList(_TigerLayer(budget, cross=True) for _ in range(budget.layers))
        self.enc_norm, self.dec_norm = nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop = nn.Dropout(budget.dropout)
        self.heads = nn.Parameter(torch.randn(width_ids, d, codes) / math.sqrt(d))
        self.user = None
        if user_buckets:  # created last: without it every other parameter starts as before
            self.user = nn.Embedding(user_buckets, d)
            nn.init.normal_(self.user.weight, std=0.02)

    def tokens(self, sids: torch.Tensor) -> torch.Tensor:
        offsets = torch.arange(sids.shape[-1], device=sids.device) * self.k
        flat = sids + offsets
        return torch.where(sids < 0, torch.full_like(flat, self.pad), flat).flatten(1)

    def encode(self, history: torch.Tensor, users: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """History codes [B, n, W] (rows of -1: padding) and, with a user token, the users' buckets [B] ->
        memory [B, (1 +) n * W, d] and its key mask [B, 1, 1, (1 +) n * W]."""
        tok = self.tokens(history)
        t = tok.shape[1]  # right-aligned positions: the newest token always sits at the last position
        h = self.embed(tok) + self.enc_pos(torch.arange(t) + self.enc_pos.num_embeddings - t)
        mask = tok != self.pad
        if self.user is not None:
            if users is None:
                raise ValueError("this generator has a user token: encode needs the users' buckets")
            h = torch.cat([self.user(users)[:, None], h], dim=1)
            mask = torch.cat([torch.ones(tok.shape[0], 1, dtype=torch.bool), mask], dim=1)
        h, mask = self.drop(h), mask[:, None, None, :]
        for layer in self.encoder:
            h = layer(h, mask)
        return self.enc_norm(h), mask

    def decode(self, mem, mem_mask: torch.Tensor, prefix: torch.Tensor, beams: int = 0) -> torch.Tensor:
        """Hidden states [B, t + 1, d] after the start token and a prefix of t codes [B, t]. With ``beams``,
        ``mem`` is each decoder layer's memory keys/values (``begin``) and the rows of ``prefix`` are each
        history's ``beams`` beams in a row."""
        offsets = torch.arange(prefix.shape[1]) * self.k
        tok = torch.cat([torch.full((prefix.shape[0], 1), self.bos), prefix + offsets], dim=1)
        h = self.drop(self.embed(tok) + self.dec_pos(torch.arange(tok.shape[1])))
        for i, layer in enumerate(self.decoder):
            if beams:
                h = layer(h, mem_mask=mem_mask, mem_kv=mem[i], beams=beams)
            else:
                h = layer(h, mem=mem, mem_mask=mem_mask)
        return self.dec_norm(h)

    def head(self, h: torch.Tensor, level: int) -> torch.Tensor:
        return h @ self.heads[level]

    def loss(self, history: torch.Tensor, target: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced cross-entropy of the target's W tokens ([B, W]) given the history ([B, n, W])."""
        mem, mask = self.encode(history, users)
        h = self.decode(mem, mask, target[:, :-1])
        logits = torch.einsum("btd,tdk->btk", h, self.heads)
        return nn.functional.cross_entropy(logits.reshape(-1, self.k), target.reshape(-1))

    def begin(self, history: torch.Tensor, users: torch.Tensor | None = None) -> tuple:
        """Encode the histories once and every decoder layer's cross-attention keys/values of the memory;
        the decoder's self-attention cache starts empty."""
        mem, mask = self.encode(history, users)
        return [layer.cross.memory(mem) for layer in self.decoder], mask, None

    def step_logits(self, state: tuple, prefix: torch.Tensor) -> torch.Tensor:
        """Logits of level ``step`` after each beam's prefix [B, n, step], running the decoder over the whole
        prefix (``next_logits`` runs only its newest token)."""
        kv, mask = state[0], state[1]
        b, n, step = prefix.shape
        h = self.decode(kv, mask, prefix.reshape(b * n, step), beams=n)
        return self.head(h[:, -1], step)

    def next_logits(self, state: tuple, prefix: torch.Tensor, parent: torch.Tensor | None) -> tuple:
        """``step_logits`` with the decoder's self-attention keys/values cached: only each beam's newest
        token [B, n] (the start token at step 0) goes through the decoder, after the cache of the beam it
        extends (``parent`` [B, n]: the previous step's beam of each). Returns the logits and the new state."""
        kv, mask, cache = state
        b, n, step = prefix.shape
        if step == 0:
            tok = torch.full((b * n, 1), self.bos)
        else:
            tok = (prefix[:, :, -1] + (step - 1) * self.k).reshape(b * n, 1)
            index = parent.reshape(b, n, 1, 1, 1)
            cache = [
                tuple(
                    c.view(b, -1, *c.shape[1:]).gather(1, index.expand(-1, -1, *c.shape[1:])).flatten(0, 1)
                    for c in layer
                )
                for layer in cache
            ]
        h = self.embed(tok) + self.dec_pos(torch.tensor([step]))
        new = []
        for i, layer in enumerate(self.decoder):
            h, layer_cache = layer.step(h, cache[i] if cache else None, kv[i], mask, n)
            new.append(layer_cache)
        return self.head(self.dec_norm(h)[:, -1], step), (kv, mask, new)


def _batches(examples: int, size: int, gen: torch.Generator, lengths: torch.Tensor | None) -> list[torch.Tensor]:
    """Shuffled batches; with ``lengths``, examples of similar length share a batch (sorted within chunks of
    32 batches, batch order shuffled) so a padded batch is trimmed to its longest example."""
    order = torch.randperm(examples, generator=gen)
    if lengths is None:
        return list(order.split(size))
    out = []
    for chunk in order.split(size * 32):
        out += list(chunk[torch.argsort(lengths[chunk], stable=True)].split(size))
    return [out[i] for i in torch.randperm(len(out), generator=gen).tolist()]


@dataclass
class Patience:
    """Early stopping on a validation score: a score above the best so far resets the count of evaluations
    without improvement, any other adds one; training stops once the count reaches ``patience`` at an epoch of at
    least ``min_epochs``. :func:`train` follows it, and benchmarks/genrec_carry.py replays saved curves with it."""

    patience: int
    min_epochs: int = 0
    best: float = -1.0
    best_epoch: int = 0
    bad: int = 0

    def score(self, epoch: int, value: float) -> bool:
        """Record the validation score of this epoch (1-based); True when it is the new best."""
        if value > self.best:
            self.best, self.best_epoch, self.bad = value, epoch, 0
            return True
        self.bad += 1
        return False

    def stops(self, epoch: int) -> bool:
        return self.bad >= self.patience and epoch >= self.min_epochs


def lr_factor(step: int, per_epoch: int, budget: Budget) -> float:
    """The learning rate of optimizer step ``step`` (from 0) as a share of ``budget.lr``: a linear warm-up over
    the first epoch, then constant, or with ``budget.lr_decay == "cosine"`` a half cosine from 1 after the
    warm-up to 0 at the last step of ``budget.epochs`` epochs (a time cap or early stopping may end training
    sooner, at a rate not yet at 0)."""
    if step < per_epoch:
        return (step + 1) / per_epoch
    if budget.lr_decay == "constant":
        return 1.0
    span = max(1, (budget.epochs - 1) * per_epoch)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step + 1 - per_epoch) / span)))


def train(
    model: nn.Module, examples: int, loss_of, budget: Budget, evaluate=None, log=print, label="", lengths=None
) -> dict:
    """AdamW (linear warm-up over the first epoch, then constant or a cosine decay: :func:`lr_factor`) over
    shuffled examples; ``loss_of(index tensor)`` is the mean loss of those examples. With ``evaluate`` (a
    no-argument function returning the validation Recall@10), early stopping: evaluated every
    ``budget.eval_every`` epochs, stops after ``budget.patience`` evaluations without a better value (not before
    epoch ``budget.min_epochs``) or at ``budget.epochs``, and keeps the best state. ``budget.budget_s`` also stops
    it (recorded as ``stopped: budget``); it counts the process's CPU seconds, not wall time, so other jobs on a
    shared machine do not cut a row short."""
    from tqdm import tqdm

    gen = torch.Generator().manual_seed(budget.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=budget.lr, weight_decay=0.01)
    per_epoch = max(1, math.ceil(examples / budget.batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: lr_factor(i, per_epoch, budget))
    losses, curve, start, cpu_start = [], [], time.perf_counter(), time.process_time()
    rule, best_state, stopped = Patience(budget.patience, budget.min_epochs), None, "max_epochs"
    bar = tqdm(total=budget.epochs * per_epoch, desc=label, mininterval=10, dynamic_ncols=True, leave=False)
    for epoch in range(budget.epochs):
        model.train()
        total, count = 0.0, 0
        for idx in _batches(examples, budget.batch_size, gen, lengths):
            loss = loss_of(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            total, count = total + loss.item() * idx.shape[0], count + idx.shape[0]
            bar.update(1)
        losses.append(round(total / max(count, 1), 4))
        line = f"    {label} epoch {epoch + 1}/{budget.epochs} loss {losses[-1]:.4f}"
        if evaluate is not None and ((epoch + 1) % budget.eval_every == 0 or epoch + 1 == budget.epochs):
            model.eval()
            value = float(evaluate())
            curve.append([epoch + 1, round(value, 4)])
            line += f" valid Recall@10 {value:.4f}"
            if rule.score(epoch + 1, value):
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        log(line + f" ({time.perf_counter() - start:.0f} s)")
        if rule.stops(epoch + 1):
            stopped = "patience"
            break
        if budget.budget_s is not None and time.process_time() - cpu_start > budget.budget_s:
            stopped = "budget"
            break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return {
        "loss_per_epoch": losses,
        "valid_recall10_curve": curve,
        "best_epoch": rule.best_epoch,
        "best_valid_recall10": round(rule.best, 4),
        "epochs_run": len(losses),
        "stopped": stopped,
        "train_s": round(time.perf_counter() - start, 2),
        "steps": per_epoch * len(losses),
    }


# ---------------------------------------------------------------------------------------------- decoding


def beam_search(
    model: nn.Module, history: torch.Tensor, beams: int, trie=None, users: torch.Tensor | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top ``beams`` next-item IDs for each of B histories of the same length ([B, n, W] codes), for any
    generator with ``begin(history)`` and ``step_logits(state, prefix [B, n, step])``, or
    ``next_logits(state, prefix, parent)`` (which also returns the next state; used when the model has it).

    With ``trie``, every step keeps only the codes ``trie.allowed_next_batch`` allows after the beam's prefix,
    so every finished beam is a real item's ID; without it, any code of the level. Returns the IDs [B, beams, W]
    and their log-probabilities [B, beams] (-inf for beams that could not be filled: fewer valid completions
    than beams). ``users``: the users' buckets, for a generator with a user token."""
    b, w, k = history.shape[0], model.w, model.k
    with torch.inference_mode():
        state = model.begin(history) if users is None else model.begin(history, users)
        prefix = torch.zeros(b, 1, 0, dtype=torch.long)
        score = torch.zeros(b, 1)
        incremental, parent = getattr(model, "next_logits", None) is not None, None
        for step in range(w):
            n = prefix.shape[1]
            if incremental:
                logits, state = model.next_logits(state, prefix, parent)
            else:
                logits = model.step_logits(state, prefix)
            logp = torch.log_softmax(logits, dim=-1).view(b, n, k)
            if trie is not None:
                logp = logp.masked_fill(~_allowed(trie, prefix, score, k), -math.inf)
            total = (score[:, :, None] + logp).view(b, n * k)
            score, pick = total.topk(min(beams, n * k), dim=1)
            parent, code = pick // k, pick % k
            prefix = torch.cat([prefix.gather(1, parent[:, :, None].expand(-1, -1, step)), code[:, :, None]], dim=2)
    return prefix.numpy(), score.numpy()


def _allowed(trie, prefix: torch.Tensor, score: torch.Tensor, k: int) -> torch.Tensor:
    """[B, n, K] codes the trie allows after each beam's prefix. Dead beams (-inf) ask about the best beam's
    prefix instead (their score stays -inf), so the trie is only asked about live prefixes."""
    b, n, t = prefix.shape
    live = torch.isfinite(score)
    query = torch.where(live[:, :, None], prefix, prefix[:, :1].expand(-1, n, -1)).reshape(b * n, t)
    mask = torch.as_tensor(trie.allowed_next_batch(query))
    return mask[:, :k].reshape(b, n, k) & live[:, :, None]


def rank_items(model: ItemGenerator, history: torch.Tensor, top: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``top`` catalog rows by the model's next-item scores, for B histories of the same length, with
    their log-probabilities (softmax over the catalog)."""
    with torch.inference_mode():
        h, _ = model.backbone(model.tokens(history))
        logp = torch.log_softmax(model.logits(h[:, -1]), dim=1)
        best = logp.topk(min(top, logp.shape[1]), dim=1)
        return best.indices.numpy(), best.values.numpy()
