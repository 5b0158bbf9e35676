"""Fitting a tokenizer: the RQ-VAE training loop and the RQ-KMeans fit, with per-epoch health."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from semid.model.config import SemidConfig
from semid.model.first_level.adaptive import GraphDecision, decide_graph_targets
from semid.model.first_level.coliked import ColikedGraph, check_trainable
from semid.model.first_level.graph_targets import GraphTargets, build_targets
from semid.model.kmeans import squared_distances
from semid.model.tokenizers.rqvae import SemanticTokenizer
from semid.model.training.collab import CodeShaping
from semid.model.training.metrics import codebook_health, levels_from_flat

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, SemanticTokenizer, torch.optim.Optimizer | None, list[dict[str, Any]]], None]


@dataclass
class TrainState:
    """What `--resume` needs: the epoch to start from, the optimizer state and the history so far."""

    start_epoch: int = 0
    optimizer_state: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    graph_decision: dict[str, Any] | None = None  # filled by fit_rqvae: semid.model.first_level.adaptive's record
    targets: GraphTargets | None = None  # the graph targets trained with (in memory only: rebuilt on resume)
    measured: GraphTargets | None = None  # the graph the decision was measured on: the targets', or a sample's


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # One generator per epoch, derived from the seed: a resumed run replays the same shuffles.
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def epoch_items(n: int, epoch_samples: int) -> int:
    """Items one epoch trains on: the whole catalog, or ``epoch_samples`` of it when larger (0: no cap).

    An epoch budget in samples rather than passes keeps a 1M-item run as long as a 100k one, and
    leaves every schedule counted in epochs (warm-ups, dead-code resets) as tuned."""
    return min(n, epoch_samples) if epoch_samples else n


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "onecycle":  # linear anneal to 4 % of the peak after the warm-up
        return max(0.04, 1.0 - 0.96 * progress)
    return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def beta_at(epoch: int, cfg: SemidConfig) -> float:
    t = cfg.train
    if t.beta_warmup_epochs == 0 or epoch >= t.beta_warmup_epochs:
        return t.beta
    return t.beta_start + (t.beta - t.beta_start) * epoch / t.beta_warmup_epochs


@torch.inference_mode()
def evaluate(tokenizer: SemanticTokenizer, x: torch.Tensor, codebook_size: int, batch: int = 8192) -> dict[str, float]:
    """Reconstruction error and codebook health of the whole training set."""
    was_training = tokenizer.training
    tokenizer.eval()
    codes, sq_err = [], 0.0
    for s in range(0, x.shape[0], batch):
        xb = x[s : s + batch]
        target = tokenizer.normalizer(xb)
        c = tokenizer.encode(xb).codes  # with first-level anchors where the tokenizer has them
        recon = tokenizer.decoder(tokenizer.quantizer.decode(c))
        sq_err += float(((recon - target) ** 2).sum())
        codes.append(c.numpy())
    tokenizer.train(was_training)
    all_codes = np.concatenate(codes)
    out = {"recon_mse": sq_err / x.shape[0]}
    out.update(codebook_health(all_codes, codebook_size))
    return out


def fit_rqkmeans(tokenizer: SemanticTokenizer, embeddings: np.ndarray, cfg: SemidConfig) -> list[dict[str, Any]]:
    """Residual k-means: each level's codebook is k-means on the previous level's residuals."""
    torch.manual_seed(cfg.train.seed)
    x = torch.from_numpy(embeddings)
    start = time.perf_counter()
    tokenizer.normalizer.fit(x)
    with torch.no_grad():
        tokenizer.quantizer.init_from_data(
            tokenizer.normalizer(x),
            iters=cfg.train.kmeans_iters,
            seed=cfg.train.seed,
            sample=cfg.train.kmeans_sample,
            restarts=cfg.train.kmeans_restarts,
            balance_from=cfg.train.kmeans_balance_from,
        )
    row = {"epoch": 1, "seconds": round(time.perf_counter() - start, 3)}
    row.update(evaluate(tokenizer, x, cfg.model.codebook_size))
    log.info("rqkmeans fitted: %s", row)
    return [row]


def fit_rqvae(
    tokenizer: SemanticTokenizer,
    embeddings: np.ndarray,
    cfg: SemidConfig,
    *,
    state: TrainState | None = None,
    progress: bool = False,
    on_epoch: EpochCallback | None = None,
    coliked: ColikedGraph | None = None,
    note: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Train the RQ-VAE; returns one metrics row per epoch. ``note``: called with one line per phase (graph
    targets, autoencoder warm-up, quantized training, done), for runs without a progress bar.

    Codebook health: a short autoencoder warm-up before the codebooks exist, seeded k-means
    initialisation on the warmed-up latents, dead-code reset after each epoch (for the first
    `dead_code_reset_until` of the run), optional EMA codebooks, beta warm-up.

    With `graph_targets` the first level learns neighbour-aware labels (semid.model.first_level.graph_targets):
    its codebook starts from the labels' latent means and a cross-entropy on the first-level
    code distances teaches the encoder to reproduce them. ``coliked`` (semid.model.first_level.coliked) adds
    co-liked partners to the graph those labels are refined on.
    """
    t = cfg.train
    state = state or TrainState()
    torch.manual_seed(t.seed)
    x = torch.from_numpy(embeddings)
    n = x.shape[0]
    per_epoch = epoch_items(n, t.epoch_samples)
    batch = min(t.batch_size, per_epoch)
    steps_per_epoch = math.ceil(per_epoch / batch)
    total_steps = t.epochs * steps_per_epoch
    warmup_steps = t.warmup_epochs * steps_per_epoch
    params = [p for p in tokenizer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    if state.optimizer_state is not None:
        optimizer.load_state_dict(state.optimizer_state)
    if state.start_epoch == 0:
        tokenizer.normalizer.fit(x)
    if coliked is not None:
        check_trainable(cfg)
    shaping = CodeShaping.build(cfg, n, coliked.liked if coliked is not None else None)  # LETTER-style terms
    targets = None
    if t.graph_targets:  # the catalog decides whether they are worth their cost (semid.model.first_level.adaptive)
        if note is not None:
            note("graph targets: building the k-NN graph and measuring their gain")
        targets, state.measured, decision = _decided_graph_targets(tokenizer, x, cfg, coliked)
        if note is not None:
            note(f"graph targets {'used' if decision.use else 'not used'}")
        state.graph_decision = decision.record()
        log.info("graph targets %s: %s", "used" if decision.use else "not used", state.graph_decision)
        state.targets = targets
    history = list(state.history)
    # Per-epoch health on a fixed seeded sample (the whole set is evaluated once, at the end).
    eval_rows = torch.randperm(n, generator=torch.Generator().manual_seed(t.seed + 1))[: t.eval_sample]
    eval_rows = eval_rows.sort().values
    for epoch in range(state.start_epoch, t.epochs):
        gen = _epoch_generator(t.seed, epoch)
        start = time.perf_counter()
        tokenizer.train()
        if not bool(tokenizer.quantizer.initialized) and epoch >= t.ae_warmup_epochs:
            _init_codebooks(tokenizer, x, cfg, targets)
        quantize = bool(tokenizer.quantizer.initialized)
        if note is not None and (epoch == state.start_epoch or epoch == t.ae_warmup_epochs):
            phase = "quantized training" if quantize else "autoencoder warm-up"
            note(f"epoch {epoch + 1}/{t.epochs}: {phase}")
        beta = beta_at(epoch, cfg)
        sums = {"loss": 0.0, "recon_loss": 0.0, "commit_loss": 0.0, "codebook_loss": 0.0}
        if targets is not None:
            sums["graph_loss"] = 0.0
        perm = torch.randperm(n, generator=gen)[:per_epoch]  # the whole catalog unless it exceeds the budget
        recent: list[list[torch.Tensor]] = []
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{t.epochs}", disable=not progress, leave=False)
        for i in bar:
            step = epoch * steps_per_epoch + i
            for group in optimizer.param_groups:
                group["lr"] = t.lr * lr_factor(step, total_steps, warmup_steps, t.schedule)
            rows = perm[i * batch : (i + 1) * batch]
            xb = x[rows]
            if quantize:
                out = tokenizer(xb, targets.label_of(rows) if targets is not None else None)
                q = out.quantized
                loss = out.recon_loss + q.codebook_loss + beta * q.commit_loss
                if targets is not None and t.graph_weight > 0:
                    graph_loss = _graph_loss(tokenizer, out.latent, targets, rows, cfg)
                    loss = loss + t.graph_weight * graph_loss
                    sums["graph_loss"] += float(graph_loss.detach())
                if shaping is not None:
                    terms = shaping.losses(q.quantized, out.latent, q.codes, tokenizer.quantizer.codebooks, rows)
                    for name, (weight, value) in terms.items():
                        loss = loss + weight * value
                        sums[name] = sums.get(name, 0.0) + float(value.detach())
                recent = (recent + [q.residuals])[-4:]
                sums["commit_loss"] += float(q.commit_loss.detach())
                sums["codebook_loss"] += float(q.codebook_loss.detach())
            else:  # autoencoder warm-up: no quantization yet
                target = tokenizer.normalizer(xb)
                recon = tokenizer.decoder(tokenizer.encoder(target))
                loss = ((recon - target) ** 2).sum(1).mean()
                out = None
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if t.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
            optimizer.step()
            sums["loss"] += float(loss.detach())
            sums["recon_loss"] += float(out.recon_loss.detach()) if out is not None else float(loss.detach())
            if progress and i % 10 == 0:
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        resets: list[int] = []
        if quantize and t.dead_code_reset_every and epoch < t.dead_code_reset_until * t.epochs:
            if (epoch + 1) % t.dead_code_reset_every == 0 and recent:
                residuals = [torch.cat([r[level] for r in recent]) for level in range(cfg.model.levels)]
                resets = tokenizer.quantizer.reset_dead_codes(residuals, threshold=t.dead_code_threshold, generator=gen)
        else:
            tokenizer.quantizer.usage.zero_()
        row: dict[str, Any] = {"epoch": epoch + 1, "quantized": quantize, "beta": round(beta, 4)}
        row.update({k: round(v / steps_per_epoch, 6) for k, v in sums.items()})
        row["lr"] = optimizer.param_groups[0]["lr"]
        if quantize:
            row.update(evaluate(tokenizer, x[eval_rows], cfg.model.codebook_size))
            row["eval_items"] = int(eval_rows.shape[0])
        row.update({f"codes_reset_l{i + 1}": r for i, r in enumerate(resets)})
        row["seconds"] = round(time.perf_counter() - start, 3)
        history.append(row)
        log.info("epoch %d: %s", epoch + 1, row)
        if progress:
            tqdm.write(_epoch_line(row))
        if on_epoch is not None:
            on_epoch(epoch + 1, tokenizer, optimizer, history)
    tokenizer.eval()
    if note is not None and history:
        note(f"epoch {history[-1]['epoch']}/{t.epochs} done: {_epoch_line(history[-1])}")
    return history


def _init_codebooks(
    tokenizer: SemanticTokenizer, x: torch.Tensor, cfg: SemidConfig, targets: GraphTargets | None = None
) -> None:
    t = cfg.train
    gen = torch.Generator().manual_seed(t.seed)
    pool = targets.rows if targets is not None else torch.arange(x.shape[0])
    rows = pool[torch.randperm(pool.shape[0], generator=gen)[: t.kmeans_sample]]
    was_training = tokenizer.training
    tokenizer.eval()
    with torch.no_grad():
        z = tokenizer.encoder(tokenizer.normalizer(x[rows]))
    tokenizer.train(was_training)
    tokenizer.quantizer.init_from_data(
        z,
        iters=t.kmeans_iters,
        seed=t.seed,
        restarts=t.kmeans_restarts,
        first_labels=targets.label_of(rows) if targets is not None else None,
    )


def _decided_graph_targets(
    tokenizer: SemanticTokenizer, x: torch.Tensor, cfg: SemidConfig, coliked: ColikedGraph | None
) -> tuple[GraphTargets | None, GraphTargets, GraphDecision]:
    """(the targets to train with, None if not used; the targets the decision was measured on; the decision).

    A graph of more than ``graph_exact_items`` rows is approximate and slow to build, so its catalog is
    measured first on the exact graph of a seeded sample of that many rows, and the full graph is built
    only if the targets will be used (semid.model.first_level.adaptive). Targets the user asked for (interactions,
    ``graph_min_gain`` 0) need no measurement first. Smaller graphs are built and measured whole."""
    t = cfg.train
    sample = None
    if coliked is None and t.graph_min_gain > 0 and 0 < t.graph_exact_items < min(x.shape[0], t.graph_max_items):
        sample = _graph_targets(tokenizer, x, cfg, max_items=t.graph_exact_items)
        decision = decide_graph_targets(
            sample.start.numpy(), sample.labels.numpy(), sample.neighbours.numpy(), min_gain=t.graph_min_gain
        )
        decision = replace(decision, decided_on_sample=int(sample.rows.shape[0]))
        if not decision.use:
            log.info("graph targets not used (measured on a sample of %d): full graph not built", len(sample.rows))
            return None, sample, decision
    targets = _graph_targets(tokenizer, x, cfg, coliked)
    if sample is None:
        decision = decide_graph_targets(
            targets.start.numpy(),
            targets.labels.numpy(),
            targets.neighbours.numpy(),
            min_gain=t.graph_min_gain,
            interactions=coliked is not None,
        )
    return (targets if decision.use else None), (targets if sample is None else sample), decision


def _graph_targets(
    tokenizer: SemanticTokenizer,
    x: torch.Tensor,
    cfg: SemidConfig,
    coliked: ColikedGraph | None = None,
    *,
    max_items: int | None = None,
) -> GraphTargets:
    """The first-level targets on the graph of ``max_items`` seeded rows (default ``graph_max_items``)."""
    t = cfg.train
    start = time.perf_counter()
    with torch.no_grad():
        normalised = tokenizer.normalizer(x)
    targets = build_targets(
        normalised,
        cfg.model.codebook_size,
        neighbours=t.graph_neighbours,
        balance=t.graph_balance,
        sweeps=t.graph_sweeps,
        seed=t.seed,
        kmeans_iters=min(t.kmeans_iters, 10),  # a start for the refinement: more iterations change nothing
        kmeans_sample=t.kmeans_sample,
        max_items=t.graph_max_items if max_items is None else max_items,
        exact_max_items=t.graph_exact_items,
        coliked=coliked,
    )
    log.info("graph targets for level 1 built in %.1f s", time.perf_counter() - start)
    return targets


def _graph_loss(
    tokenizer: SemanticTokenizer, z: torch.Tensor, targets: GraphTargets, rows: torch.Tensor, cfg: SemidConfig
) -> torch.Tensor:
    """Cross-entropy between the first-level code distances and the soft graph targets.

    Distances are scaled by their batch mean over all codes (times ``graph_temperature``). Scaling
    by the distance to the target code instead rewards shrinking every cluster to a point, which
    starved the lower levels (tuning.md)."""
    d = squared_distances(z, tokenizer.quantizer.codebooks[0].detach())
    scale = d.mean().detach().clamp_min(1e-8) * cfg.train.graph_temperature
    inside = targets.position[rows] >= 0  # rows in the graph (all of them unless it was sampled)
    if not bool(inside.any()):
        return d.new_zeros(())
    soft = targets.soft(rows[inside], cfg.model.codebook_size, cfg.train.graph_soft)
    return -(soft * F.log_softmax(-d[inside] / scale, dim=1)).sum(dim=1).mean()


def _epoch_line(row: dict[str, Any]) -> str:
    parts = [f"epoch {row['epoch']}", f"loss {row['loss']:.4f}"]
    if "recon_mse" in row:
        parts.append(f"recon {row['recon_mse']:.4f}")
        parts.append("ppl " + "/".join(f"{lv['perplexity']:.0f}" for lv in levels_from_flat(row)))
        parts.append(f"collisions {100 * row['base_collision_rate']:.2f}%")
    return " | ".join(parts)
