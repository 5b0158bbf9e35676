"""Typed configuration of a tokenizer and its training run, validated in one place."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOKENIZERS = ("rqvae", "rqkmeans")
NORMALIZATIONS = ("l2", "standardize", "none")
SCHEDULES = ("cosine", "onecycle", "constant")
LAYER_NORMS = ("batchnorm", "layernorm", "none")


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not (low <= value <= high):
        raise ValueError(f"{name} is {value}; expected a value in [{low}, {high}]")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} is {value!r}; expected one of {', '.join(choices)}")


@dataclass(kw_only=True)
class ModelConfig:
    """Architecture: everything needed to rebuild the tokenizer's modules."""

    tokenizer: str = "rqvae"
    input_dim: int = 384
    hidden_dims: tuple[int, ...] = (512, 256)
    latent_dim: int = 32
    levels: int = 3
    codebook_size: int = 256
    normalization: str = "l2"
    layer_norm: str = "layernorm"
    activation: str = "silu"
    dropout: float = 0.0

    def validate(self) -> None:
        _check_choice("tokenizer", self.tokenizer, TOKENIZERS)
        _check_choice("normalization", self.normalization, NORMALIZATIONS)
        _check_choice("layer_norm", self.layer_norm, LAYER_NORMS)
        _check_choice("activation", self.activation, ("silu", "relu", "gelu"))
        _check_range("input_dim", self.input_dim, 1, 1 << 16)
        _check_range("latent_dim", self.latent_dim, 1, 4096)
        _check_range("levels", self.levels, 1, 8)
        _check_range("codebook_size", self.codebook_size, 2, 1 << 15)
        _check_range("dropout", self.dropout, 0.0, 0.9)
        for width in self.hidden_dims:
            _check_range("hidden_dims", width, 1, 1 << 16)

    @property
    def code_dim(self) -> int:
        """Dimension the residual quantizer works in (RQ-KMeans quantizes the input itself)."""
        return self.latent_dim if self.tokenizer == "rqvae" else self.input_dim


@dataclass(kw_only=True)
class TrainConfig:
    """Optimisation and codebook-health settings of one training run."""

    epochs: int = 60
    batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_epochs: int = 2
    ae_warmup_epochs: int = 3
    grad_clip: float = 1.0
    beta: float = 0.25
    beta_start: float = 0.1
    beta_warmup_epochs: int = 5
    ema: bool = True
    ema_decay: float = 0.99
    kmeans_iters: int = 25
    kmeans_sample: int = 65536
    kmeans_restarts: int = 3
    dead_code_threshold: float = 1.0
    dead_code_reset_every: int = 1
    dead_code_reset_until: float = 0.8
    eval_sample: int = 32768
    graph_targets: bool = True  # neighbour-aware first level (model/graph_targets.py); RQ-VAE only
    graph_neighbours: int = 10
    graph_balance: float = 1.9
    graph_sweeps: int = 8
    graph_soft: float = 0.5
    graph_weight: float = 1.0
    graph_temperature: float = 0.1
    graph_max_items: int = 50_000  # exact k-NN is O(n^2): larger catalogs build the graph on a sample
    seed: int = 0
    threads: int = 0

    def validate(self) -> None:
        _check_range("epochs", self.epochs, 1, 100_000)
        _check_range("batch_size", self.batch_size, 2, 1 << 20)
        _check_range("lr", self.lr, 1e-7, 1.0)
        _check_range("weight_decay", self.weight_decay, 0.0, 1.0)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_range("warmup_epochs", self.warmup_epochs, 0, self.epochs)
        _check_range("ae_warmup_epochs", self.ae_warmup_epochs, 0, self.epochs - 1)
        _check_range("grad_clip", self.grad_clip, 0.0, 1e6)
        _check_range("beta", self.beta, 0.0, 10.0)
        _check_range("beta_start", self.beta_start, 0.0, 10.0)
        _check_range("beta_warmup_epochs", self.beta_warmup_epochs, 0, self.epochs)
        _check_range("ema_decay", self.ema_decay, 0.0, 0.99999)
        _check_range("kmeans_iters", self.kmeans_iters, 1, 1000)
        _check_range("kmeans_sample", self.kmeans_sample, 2, 1 << 24)
        _check_range("kmeans_restarts", self.kmeans_restarts, 1, 100)
        _check_range("dead_code_threshold", self.dead_code_threshold, 0.0, 1e9)
        _check_range("dead_code_reset_every", self.dead_code_reset_every, 0, 100_000)
        _check_range("dead_code_reset_until", self.dead_code_reset_until, 0.0, 1.0)
        _check_range("eval_sample", self.eval_sample, 1, 1 << 30)
        _check_range("graph_neighbours", self.graph_neighbours, 1, 1000)
        _check_range("graph_balance", self.graph_balance, 0.0, 1000.0)
        _check_range("graph_sweeps", self.graph_sweeps, 0, 1000)
        _check_range("graph_soft", self.graph_soft, 0.0, 1.0)
        _check_range("graph_weight", self.graph_weight, 0.0, 1000.0)
        _check_range("graph_temperature", self.graph_temperature, 1e-4, 100.0)
        _check_range("graph_max_items", self.graph_max_items, 2, 1 << 24)
        _check_range("seed", self.seed, 0, 2**63 - 1)
        _check_range("threads", self.threads, 0, 1024)


@dataclass(kw_only=True)
class SemidConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> SemidConfig:
        self.model.validate()
        self.train.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"model": dataclasses.asdict(self.model), "train": dataclasses.asdict(self.train)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SemidConfig:
        if not isinstance(data, dict):
            raise ValueError("config must be a JSON object with 'model' and/or 'train' sections")
        unknown = set(data) - {"model", "train"}
        if unknown:
            raise ValueError(f"config has unknown section(s) {sorted(unknown)}; expected 'model' and 'train'")
        model = _build(ModelConfig, data.get("model", {}), "model")
        train = _build(TrainConfig, data.get("train", {}), "train")
        return cls(model=model, train=train).validate()

    @classmethod
    def from_file(cls, path: str | Path) -> SemidConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"config file {path} is not valid JSON: {err}") from err
        return cls.from_dict(data)

    def with_overrides(self, section: str, **values: Any) -> SemidConfig:
        """A copy with some fields replaced (None values are ignored), validated."""
        values = {k: v for k, v in values.items() if v is not None}
        data = self.to_dict()
        data[section].update(values)
        return SemidConfig.from_dict(data)


def _build(kind: type, values: Any, section: str) -> Any:
    if not isinstance(values, dict):
        raise ValueError(f"config section {section!r} must be an object")
    names = {f.name: f for f in dataclasses.fields(kind)}
    unknown = set(values) - set(names)
    if unknown:
        raise ValueError(f"config {section} has unknown field(s) {sorted(unknown)}")
    cleaned: dict[str, Any] = {}
    for key, value in values.items():
        default = getattr(kind(), key)
        if isinstance(default, tuple):
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"{section}.{key} must be a list of integers")
            value = tuple(value)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"{section}.{key} must be true or false")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{section}.{key} must be an integer, got {value!r}")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{section}.{key} must be a number, got {value!r}")
            value = float(value)
        elif isinstance(default, str) and not isinstance(value, str):
            raise ValueError(f"{section}.{key} must be a string, got {value!r}")
        cleaned[key] = value
    return kind(**cleaned)
