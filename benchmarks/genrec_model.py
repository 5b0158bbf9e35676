"""The generators of the generative-retrieval benchmark, in plain torch, trained from scratch.

- ``SemanticGenerator``: TIGER-style, decoder-only. A user's history is the flat sequence of its items'
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


@dataclass(frozen=True)
class Budget:
    """What every generator gets, whatever its tokens."""

    epochs: int = 8
    batch_size: int = 128  # windows per step
    width: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.1
    lr: float = 3e-3
    seed: int = 0


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


def train(model: nn.Module, inputs: torch.Tensor, learn: torch.Tensor, budget: Budget, log=print) -> dict:
    """AdamW over shuffled windows for ``budget.epochs`` epochs; returns the loss per epoch and seconds."""
    gen = torch.Generator().manual_seed(budget.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=budget.lr, weight_decay=0.01)
    steps = max(1, budget.epochs * math.ceil(inputs.shape[0] / budget.batch_size))
    warm = max(1, steps // 10)  # linear warm-up over a tenth of the steps, then cosine decay
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps))
    )
    losses, start = [], time.perf_counter()
    model.train()
    for epoch in range(budget.epochs):
        order = torch.randperm(inputs.shape[0], generator=gen)
        total, count = 0.0, 0
        for s in range(0, order.shape[0], budget.batch_size):
            idx = order[s : s + budget.batch_size]
            loss = model.loss(inputs[idx], learn[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            total, count = total + loss.item() * idx.shape[0], count + idx.shape[0]
        losses.append(round(total / max(count, 1), 4))
        log(f"    epoch {epoch + 1}/{budget.epochs} loss {losses[-1]:.4f} ({time.perf_counter() - start:.0f} s)")
    model.eval()
    return {"loss_per_epoch": losses, "train_s": round(time.perf_counter() - start, 2), "steps": steps}


# ---------------------------------------------------------------------------------------------- decoding


def beam_search(
    model: SemanticGenerator, history: torch.Tensor, beams: int, trie=None
) -> tuple[np.ndarray, np.ndarray]:
    """Top ``beams`` next-item IDs for each of B histories of the same length ([B, n, W] codes).

    With ``trie``, every step keeps only the codes ``trie.allowed_next_batch`` allows after the beam's prefix,
    so every finished beam is a real item's ID; without it, any code of the level. The history is run once
    and its keys/values cached; each step runs only the beams' generated tokens. Returns the IDs [B, beams, W]
    and their log-probabilities [B, beams] (-inf for beams that could not be filled: fewer valid completions
    than beams)."""
    b, w, k = history.shape[0], model.w, model.k
    with torch.inference_mode():
        h, cache = model.backbone(model.tokens(history))
        last = h[:, -1]  # predicts level 0 of the next item
        prefix = torch.zeros(b, 1, 0, dtype=torch.long)
        score = torch.zeros(b, 1)
        for step in range(w):
            n = prefix.shape[1]
            if step:
                past = [(kc.repeat_interleave(n, dim=0), vc.repeat_interleave(n, dim=0)) for kc, vc in cache]
                h, _ = model.backbone(model.tokens(prefix.reshape(b * n, 1, step)), past)
                last = h[:, -1]
            logits = model.head(last, torch.full((last.shape[0],), step, dtype=torch.long))
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


def rank_items(model: ItemGenerator, history: torch.Tensor, top: int) -> np.ndarray:
    """Top ``top`` catalog rows by the model's next-item scores, for B histories of the same length."""
    with torch.inference_mode():
        h, _ = model.backbone(model.tokens(history))
        logits = model.logits(h[:, -1])
        return logits.topk(min(top, logits.shape[1]), dim=1).indices.numpy()
