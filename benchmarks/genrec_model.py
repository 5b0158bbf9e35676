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
    batch_size: int = 64  # windows per step
    width: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.1
    lr: float = 2e-3
    seed: int = 0


class _Backbone(nn.Module):
    def __init__(self, vocab: int, positions: int, budget: Budget) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, budget.width)
        self.position = nn.Embedding(positions, budget.width)
        layer = nn.TransformerEncoderLayer(
            budget.width,
            budget.heads,
            dim_feedforward=4 * budget.width,
            dropout=budget.dropout,
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, budget.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(budget.width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        h = self.embed(tokens) + self.position(torch.arange(t, device=tokens.device))
        causal = nn.Transformer.generate_square_subsequent_mask(t, device=tokens.device)
        return self.norm(self.blocks(h, mask=causal, is_causal=True))


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

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, T] tokens -> [B, T, K]: at position p, the codes of the token at p + 1 (level (p + 1) % W)."""
        h = self.backbone(tokens)
        levels = (torch.arange(tokens.shape[1], device=tokens.device) + 1) % self.w
        return torch.einsum("btd,tdk->btk", h, self.heads[levels])

    def loss(self, sids: torch.Tensor, learn: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of every token of the learned items given everything before it."""
        logits = self.logits(self.tokens(sids))[:, :-1]
        target = sids.flatten(1)[:, 1:]
        mask = learn.repeat_interleave(self.w, dim=1)[:, 1:] & (target >= 0)
        return nn.functional.cross_entropy(logits[mask], target[mask])


class ItemGenerator(nn.Module):
    """SASRec-style next-item model: item-id tokens, a softmax over the catalog."""

    def __init__(self, items: int, max_items: int, budget: Budget) -> None:
        super().__init__()
        self.items = items
        self.backbone = _Backbone(items + 1, max_items, budget)

    def tokens(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.where(rows < 0, torch.full_like(rows, self.items), rows)

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.backbone(tokens) @ self.backbone.embed.weight[: self.items].T

    def loss(self, rows: torch.Tensor, learn: torch.Tensor) -> torch.Tensor:
        logits = self.logits(self.tokens(rows))[:, :-1]
        target = rows[:, 1:]
        mask = learn[:, 1:] & (target >= 0)
        return nn.functional.cross_entropy(logits[mask], target[mask])


def train(model: nn.Module, inputs: torch.Tensor, learn: torch.Tensor, budget: Budget, log=print) -> dict:
    """AdamW over shuffled windows for ``budget.epochs`` epochs; returns the loss per epoch and seconds."""
    gen = torch.Generator().manual_seed(budget.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=budget.lr, weight_decay=0.01)
    steps = max(1, budget.epochs * math.ceil(inputs.shape[0] / budget.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=budget.lr, total_steps=steps, pct_start=0.1)
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
    so every finished beam is a real item's ID; without it, any code of the level. Returns the IDs
    [B, beams, W] and their log-probabilities [B, beams] (-inf for beams that could not be filled: fewer valid
    completions than beams)."""
    b, w, k = history.shape[0], model.w, model.k
    context = model.tokens(history)  # [B, T]
    prefix = torch.zeros(b, 1, 0, dtype=torch.long)
    score = torch.zeros(b, 1)
    with torch.inference_mode():
        for step in range(w):
            n = prefix.shape[1]
            generated = model.tokens(prefix.reshape(b * n, 1, step)) if step else prefix.reshape(b * n, 0)
            tokens = torch.cat([context.repeat_interleave(n, dim=0), generated], dim=1)
            logp = torch.log_softmax(model.logits(tokens)[:, -1], dim=-1).view(b, n, k)
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
        logits = model.logits(model.tokens(history))[:, -1]
        return logits.topk(min(top, logits.shape[1]), dim=1).indices.numpy()
