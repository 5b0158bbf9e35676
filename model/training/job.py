"""The offline training job: build the tokenizer from a config, fit it, write the checkpoint."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semid.model.config import SemidConfig
from semid.model.first_level.adaptive import GraphDecision, judge_trained
from semid.model.first_level.anchors import REPRESENTATIVES, anchor_rows, representatives
from semid.model.first_level.coliked import ColikedGraph, check_trainable
from semid.model.tokenizers.rqvae import SemanticTokenizer, build_tokenizer
from semid.model.training.checkpoint import (
    CheckpointError,
    clear_resume_state,
    load_resume_state,
    save_checkpoint,
    save_resume_state,
)
from semid.model.training.collab import check_options
from semid.model.training.cpu_threads import apply_threads, gives_threads_back
from semid.model.training.train import TrainState, evaluate, fit_rqkmeans, fit_rqvae

log = logging.getLogger(__name__)


@gives_threads_back
def train_tokenizer(
    embeddings: np.ndarray,
    config: SemidConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = False,
    coliked: ColikedGraph | None = None,
    note: Callable[[str], None] | None = None,
) -> tuple[str, dict[str, Any]]:
    """Fit a tokenizer on [N, D] float32 embeddings and write a checkpoint; returns (fingerprint, metrics).

    ``coliked``: co-liked partners of the rows (semid.model.first_level.coliked), blended into the first-level
    graph; the checkpoint's metrics record which interactions were used (``interactions``). ``note``: called
    with one line per phase (for a run without a progress bar). Training picks its own torch thread count
    (semid.model.training.cpu_threads) and gives the caller's back when it returns or raises."""
    config = config.validate()  # checks across fields and sections again: a config may be edited after it was built
    check_options(config, interactions=coliked is not None)
    if coliked is not None:
        check_trainable(config)
    if coliked is not None and coliked.partners.shape[0] != embeddings.shape[0]:
        raise ValueError(f"co-liked partners cover {len(coliked.partners)} items, the catalog has {len(embeddings)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if embeddings.ndim != 2 or embeddings.shape[0] < 2:
        raise ValueError(f"training needs at least 2 embeddings, got shape {embeddings.shape}")
    if embeddings.shape[1] != config.model.input_dim:
        config = config.with_overrides("model", input_dim=int(embeddings.shape[1]))
    threads = apply_threads(config.train.threads)  # fewer threads on a busy machine (semid.model.training.cpu_threads)
    if note is not None:
        note(f"training on {threads} thread(s)")
    state = TrainState()
    torch.manual_seed(config.train.seed)  # the MLP's initial weights come from the seed too
    tokenizer: SemanticTokenizer
    if resume:
        epoch, model_state, opt_state, history, saved_cfg = load_resume_state(out)
        if SemidConfig.from_dict(saved_cfg).to_dict() != config.to_dict():
            raise CheckpointError(f"{out}: the interrupted run used another config; resume with the same flags")
        tokenizer = build_tokenizer(config.model, config.train)
        tokenizer.load_state_dict(model_state)
        state = TrainState(start_epoch=epoch, optimizer_state=opt_state, history=history)
        log.info("resuming %s after epoch %d", out, epoch)
    else:
        tokenizer = build_tokenizer(config.model, config.train)
    start = time.perf_counter()
    if config.model.tokenizer == "rqkmeans":
        history = fit_rqkmeans(tokenizer, embeddings, config)
    else:

        def checkpoint_epoch(epoch: int, tok: SemanticTokenizer, opt: torch.optim.Optimizer | None, hist: list) -> None:
            if opt is not None and epoch < config.train.epochs:
                save_resume_state(out, tok, opt, epoch, hist, config)

        history = fit_rqvae(
            tokenizer,
            embeddings,
            config,
            state=state,
            progress=progress,
            on_epoch=checkpoint_epoch,
            coliked=coliked,
            note=note,
        )
        if state.targets is not None and state.graph_decision is not None:
            tokenizer, history = _judge_graph_targets(tokenizer, history, embeddings, config, state, out, progress)
        if tokenizer.anchors is not None:
            _set_anchors(tokenizer, embeddings, config)
    final = {k: v for k, v in history[-1].items() if k not in ("epoch", "seconds", "lr", "eval_items")}
    if config.model.tokenizer == "rqvae":  # the last epoch saw a sample; the final figures cover every item
        final.update(evaluate(tokenizer, torch.from_numpy(embeddings), config.model.codebook_size))
    metrics = {
        "items": int(embeddings.shape[0]),
        "train_seconds": round(time.perf_counter() - start + sum(r["seconds"] for r in state.history), 2),
        "final": final,
        "epochs": history,
        "interactions": coliked.record if coliked is not None else None,
        # the catalog's measurement and decision (semid.model.first_level.adaptive)
        "graph_targets": state.graph_decision,
        "threads": threads,  # picked from the load unless set: pin it (--threads) to reproduce a run bit for bit
    }
    fingerprint = save_checkpoint(out, tokenizer, config, metrics)
    clear_resume_state(out)
    return fingerprint, metrics


def _judge_graph_targets(
    tokenizer: SemanticTokenizer,
    history: list[dict[str, Any]],
    embeddings: np.ndarray,
    config: SemidConfig,
    state: TrainState,
    out: Path,
    progress: bool,
) -> tuple[SemanticTokenizer, list[dict[str, Any]]]:
    """Keep a run trained on graph targets if its first codes hold their gain
    (semid.model.first_level.adaptive.judge_trained).
    In doubt, train again exactly as with ``graph_targets: false`` (same seed) and keep whichever the rule picks.

    When the plain run is kept, the metrics' epochs are its own; train_seconds counts both runs. The plain
    run writes no resume state: an interruption during it starts the job over."""
    measured = state.measured or state.targets  # the graph the decision was measured on (a sample's, when large)
    x = torch.from_numpy(embeddings)[measured.rows]
    neighbours = measured.neighbours.numpy()
    chosen = GraphDecision.from_record(state.graph_decision)
    trained = _first_codes(tokenizer, x).numpy()
    decision = judge_trained(chosen, trained, neighbours)
    if decision.reason == "unsure":
        log.info(
            "graph targets: trained agreement %.3f vs k-means %.3f (min gain %.3f); training without them to compare",
            decision.trained_agreement,
            decision.kmeans_agreement,
            decision.min_gain,
        )
        clear_resume_state(out)
        torch.manual_seed(config.train.seed)
        plain = build_tokenizer(config.model, config.train)
        plain_config = config.with_overrides("train", graph_targets=False)
        plain_history = fit_rqvae(plain, embeddings, plain_config, state=TrainState(), progress=progress)
        decision = judge_trained(chosen, trained, neighbours, plain=_first_codes(plain, x).numpy())
        if not decision.use:
            tokenizer, history = plain, plain_history
    state.graph_decision = decision.record()
    log.info("graph targets after training: %s", state.graph_decision)
    return tokenizer, history


@torch.inference_mode()
def _first_codes(tokenizer: SemanticTokenizer, x: torch.Tensor, batch: int = 8192) -> torch.Tensor:
    """The trained quantizer's first code of each row (nearest centroid: no anchors)."""
    parts = [
        tokenizer.quantizer.encode(tokenizer.encoder(tokenizer.normalizer(x[s : s + batch])))[0][:, 0]
        for s in range(0, len(x), batch)
    ]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def _set_anchors(tokenizer: SemanticTokenizer, embeddings: np.ndarray, config: SemidConfig) -> None:
    """Keep every training item with the first code the trained quantizer gives it; a catalog with more items
    than ``first_level_anchors`` keeps a bounded set of per-code representatives instead, plus the digests of
    its items so that they keep their trained codes (semid.model.first_level.anchors.representatives)."""
    limit = config.model.first_level_anchors
    rows = torch.from_numpy(anchor_rows(embeddings.shape[0], limit))
    x = torch.from_numpy(embeddings)
    if rows.shape[0] == 0:
        budget = min(limit, REPRESENTATIVES)
        first = _first_codes(tokenizer, x)
        with torch.inference_mode():
            unit = torch.nn.functional.normalize(tokenizer.normalizer(x), dim=1)
        vectors, codes = representatives(unit, first, budget, seed=config.train.seed)
        tokenizer.anchors.set(vectors, codes, tokenizer.quantizer.codebooks[0], trained=x)
        log.info(
            "%d training items > first_level_anchors %d: %d first-level representatives kept (and the items' digests)",
            embeddings.shape[0],
            limit,
            vectors.shape[0],
        )
        return
    x = x[rows]
    with torch.inference_mode():
        target = tokenizer.normalizer(x)
    first = _first_codes(tokenizer, x)
    tokenizer.anchors.set(target.clone(), first.clone(), tokenizer.quantizer.codebooks[0])
    log.info("%d first-level anchors kept", rows.shape[0])
