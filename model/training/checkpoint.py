"""Self-describing checkpoints: config.json + model.safetensors + metrics.json + fingerprint.

Nothing is unpickled: weights are safetensors, everything else JSON. The fingerprint is a
SHA-256 of the canonical config and the weight file; indexes record it, and loading
recomputes it, so a corrupted or swapped weight file is caught.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from semid.model.config import SemidConfig
from semid.model.data.files import (
    copy_dir_atomically,
    replace_atomically,
    write_bytes_atomically,
    write_json_atomically,
)
from semid.model.tokenizers.rqvae import SemanticTokenizer, build_tokenizer

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"
FINGERPRINT_FILE = "fingerprint"
RESUME_WEIGHTS = "resume.safetensors"
RESUME_STATE = "resume.json"


class CheckpointError(ValueError):
    """A checkpoint directory is missing, incomplete, corrupt or not a semid checkpoint."""


@dataclass
class LoadedCheckpoint:
    tokenizer: SemanticTokenizer
    config: SemidConfig
    fingerprint: str
    metrics: dict[str, Any]
    path: Path


def write_json(path: Path, data: Any) -> None:
    write_json_atomically(path, data)


def _canonical_config(config: dict[str, Any]) -> bytes:
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def fingerprint_of(config: dict[str, Any], weights_path: Path) -> str:
    h = hashlib.sha256()
    h.update(_canonical_config(config))
    with open(weights_path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:32]


def _state_tensors(tokenizer: SemanticTokenizer) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().clone() for k, v in tokenizer.state_dict().items()}


def save_checkpoint(
    out_dir: str | Path, tokenizer: SemanticTokenizer, config: SemidConfig, metrics: dict[str, Any]
) -> str:
    """Write a complete checkpoint (weights first, config, metrics, fingerprint last); returns the fingerprint."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = {
        "format_version": FORMAT_VERSION,
        "kind": "semid-tokenizer",
        **config.to_dict(),
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }
    tensors = _state_tensors(tokenizer)
    replace_atomically(out / WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp)))
    write_json(out / CONFIG_FILE, cfg)
    fp = fingerprint_of(cfg, out / WEIGHTS_FILE)
    write_json(out / METRICS_FILE, {**metrics, "fingerprint": fp})
    write_bytes_atomically(out / FINGERPRINT_FILE, (fp + "\n").encode())
    return fp


def read_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a directory")
    cfg_path = path / CONFIG_FILE
    if not cfg_path.is_file():
        inner = path / "checkpoint"
        if (path / "manifest.json").is_file() and (inner / CONFIG_FILE).is_file():
            raise CheckpointError(f"{path} is an index, not a checkpoint; its checkpoint is {inner}")
        raise CheckpointError(f"checkpoint {path} has no {CONFIG_FILE}")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"checkpoint {path}: {CONFIG_FILE} is not valid JSON ({err})") from err
    if not isinstance(cfg, dict) or cfg.get("kind") != "semid-tokenizer":
        raise CheckpointError(f"checkpoint {path}: {CONFIG_FILE} is not a semid tokenizer config")
    if cfg.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format_version {cfg.get('format_version')}; expected {FORMAT_VERSION}"
        )
    return cfg


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Rebuild the tokenizer from config.json alone and load its weights; verifies the fingerprint."""
    path = Path(path)
    cfg = read_config(path)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"checkpoint {path} has no {WEIGHTS_FILE}")
    try:
        model_section = dict(cfg.get("model", {}))
        # written before first-level anchors existed: keep encoding with the nearest centroid, as then
        model_section.setdefault("first_level_anchors", 0)
        # written before rank-weighted votes: every anchor's vote counts the same, as then
        model_section.setdefault("anchor_rank_scale", 0.0)
        config = SemidConfig.from_dict({"model": model_section, "train": cfg.get("train", {})})
    except ValueError as err:
        raise CheckpointError(f"checkpoint {path}: invalid config ({err})") from err
    fp = fingerprint_of(cfg, weights)
    fp_file = path / FINGERPRINT_FILE
    if fp_file.is_file() and fp_file.read_text().strip() != fp:
        raise CheckpointError(f"checkpoint {path}: weights or config do not match its fingerprint (corrupt or edited)")
    tokenizer = build_tokenizer(config.model, config.train)
    try:
        state = load_file(str(weights))
        # written before balanced levels: no offsets, every code chosen by its distance alone, as then
        state.setdefault("quantizer.code_bias", torch.zeros_like(tokenizer.quantizer.code_bias))
        tokenizer.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError, OSError) as err:
        raise CheckpointError(
            f"checkpoint {path}: {WEIGHTS_FILE} does not fit the config ({str(err).splitlines()[0]})"
        ) from err
    tokenizer.eval()
    metrics: dict[str, Any] = {}
    if (path / METRICS_FILE).is_file():
        try:
            metrics = json.loads((path / METRICS_FILE).read_text())
        except json.JSONDecodeError:
            metrics = {}
    return LoadedCheckpoint(tokenizer=tokenizer, config=config, fingerprint=fp, metrics=metrics, path=path)


def save_resume_state(
    out_dir: Path,
    tokenizer: SemanticTokenizer,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    history: list[dict[str, Any]],
    config: SemidConfig,
) -> None:
    """Everything `--resume` needs after `epoch` finished: weights, optimizer moments, history."""
    tensors = {f"model.{k}": v for k, v in _state_tensors(tokenizer).items()}
    opt = optimizer.state_dict()
    meta_state: dict[str, Any] = {}
    for pid, pstate in opt["state"].items():
        for key, value in pstate.items():
            if torch.is_tensor(value) and value.ndim > 0:
                tensors[f"opt.{pid}.{key}"] = value.contiguous().clone()
            else:
                meta_state.setdefault(str(pid), {})[key] = float(value)
    replace_atomically(out_dir / RESUME_WEIGHTS, lambda tmp: save_file(tensors, str(tmp)))
    write_json(
        out_dir / RESUME_STATE,
        {
            "epoch": epoch,
            "history": history,
            "config": config.to_dict(),
            "param_groups": opt["param_groups"],
            "scalar_state": meta_state,
        },
    )


def load_resume_state(out_dir: Path) -> tuple[int, dict[str, torch.Tensor], dict[str, Any], list[dict[str, Any]], dict]:
    """(epochs done, model state, optimizer state dict, history, config dict) of an interrupted run."""
    state_path, weights_path = out_dir / RESUME_STATE, out_dir / RESUME_WEIGHTS
    if not state_path.is_file() or not weights_path.is_file():
        raise CheckpointError(f"{out_dir} has no interrupted run to resume (no {RESUME_STATE})")
    try:
        meta = json.loads(state_path.read_text())
        tensors = load_file(str(weights_path))
    except (json.JSONDecodeError, SafetensorError, OSError) as err:
        raise CheckpointError(f"{out_dir}: resume state is unreadable ({err})") from err
    model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            opt_state.setdefault(int(pid), {})[name] = value
    for pid, values in meta.get("scalar_state", {}).items():
        for name, value in values.items():
            opt_state.setdefault(int(pid), {})[name] = torch.tensor(value)
    optimizer_state = {"state": opt_state, "param_groups": meta["param_groups"]}
    return int(meta["epoch"]), model_state, optimizer_state, meta["history"], meta["config"]


def clear_resume_state(out_dir: Path) -> None:
    for name in (RESUME_STATE, RESUME_WEIGHTS):
        (out_dir / name).unlink(missing_ok=True)


def copy_checkpoint(src: Path, dst: Path) -> None:
    """Copy the files that make a checkpoint (not resume state) into dst, atomically."""
    names = [n for n in (CONFIG_FILE, WEIGHTS_FILE, METRICS_FILE, FINGERPRINT_FILE) if (src / n).is_file()]
    copy_dir_atomically(src, dst, only=names)
