"""Typed configuration of a tokenizer and its training run.

Each field is declared once, here: its type, default, range and help text. Validation, JSON loading
and the `semid train` flags (see :func:`config_fields`) are all derived from these declarations.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, ValidationError, model_validator
from pydantic.fields import FieldInfo

Tokenizer = Literal["rqvae", "rqkmeans"]
Normalization = Literal["l2", "standardize", "none"]
Schedule = Literal["cosine", "onecycle", "constant"]
LayerNorm = Literal["batchnorm", "layernorm", "none"]
Activation = Literal["silu", "relu", "gelu"]

_STRICT = ConfigDict(extra="forbid", validate_assignment=True)


def _int(default: int, low: int, high: int, description: str) -> Any:
    return Field(default, ge=low, le=high, description=description)


def _float(default: float, low: float, high: float, description: str) -> Any:
    return Field(default, ge=low, le=high, description=description)


class ModelConfig(BaseModel):
    """Architecture: everything needed to rebuild the tokenizer's modules."""

    model_config = _STRICT

    tokenizer: Tokenizer = Field("rqvae", description="rqvae (learned) or rqkmeans (residual k-means, no network).")
    input_dim: StrictInt = _int(384, 1, 1 << 16, "Embedding dimension (taken from the catalog when training).")
    hidden_dims: tuple[Annotated[StrictInt, Field(ge=1, le=1 << 16)], ...] = Field(
        (512, 256), description="Encoder MLP widths (the decoder mirrors them), e.g. 512,256."
    )
    latent_dim: StrictInt = _int(32, 1, 4096, "Dimension of the quantized latent.")
    levels: StrictInt = _int(3, 1, 8, "Quantization levels L.")
    codebook_size: StrictInt = _int(256, 2, 1 << 15, "Codes per level K.")
    normalization: Normalization = Field("l2", description="Input normalisation: l2, standardize or none.")
    layer_norm: LayerNorm = Field("layernorm", description="Normalisation inside the MLPs.")
    activation: Activation = Field("silu", description="MLP activation.")
    dropout: StrictFloat = _float(0.0, 0.0, 0.9, "Dropout in the MLPs.")
    first_level_anchors: StrictInt = _int(
        16384,
        0,
        1 << 24,
        "RQ-VAE: a training catalog of at most this many items is kept in the checkpoint as first-level anchors; "
        "a new item's first code is the weighted majority code of its nearest anchors (a larger catalog keeps "
        "at most min(this, 8192) per-code representatives and its items' digests; 0: off).",
    )
    anchor_neighbours: StrictInt = _int(10, 1, 1000, "k of the first-level anchors' vote (anchor_vote.md).")
    anchor_balance: StrictFloat = _float(
        0.5, 0.0, 4.0, "Each anchor's vote is weighted by 1 / (anchors of its code) ** balance (0: plain majority)."
    )
    anchor_rank_scale: StrictFloat = _float(
        8.0,
        0.0,
        1000.0,
        "The r-th nearest anchor's vote (r = 0 .. k-1) counts 1 / (1 + r / scale) (0: equal votes; anchor_vote.md).",
    )
    anchor_min_share: StrictFloat = _float(
        0.0, 0.0, 1.0, "Share of the k votes the winning code needs; below it the nearest centroid is kept."
    )

    @property
    def code_dim(self) -> int:
        """Dimension the residual quantizer works in (RQ-KMeans quantizes the input itself)."""
        return self.latent_dim if self.tokenizer == "rqvae" else self.input_dim


class TrainConfig(BaseModel):
    """Optimisation and codebook-health settings of one training run."""

    model_config = _STRICT

    epochs: StrictInt = _int(60, 1, 100_000, "Training epochs.")
    epoch_samples: StrictInt = _int(
        100_000,
        0,
        1 << 30,
        "Items per epoch: a larger catalog trains each epoch on a fresh seeded sample of this many, so the run's "
        "cost stops growing with the catalog (0: every item every epoch).",
    )
    batch_size: StrictInt = _int(1024, 2, 1 << 20, "Items per optimisation step.")
    lr: StrictFloat = _float(1e-3, 1e-7, 1.0, "AdamW learning rate.")
    weight_decay: StrictFloat = _float(1e-4, 0.0, 1.0, "AdamW weight decay.")
    schedule: Schedule = Field("cosine", description="Learning-rate schedule.")
    warmup_epochs: StrictInt = _int(2, 0, 100_000, "Learning-rate warm-up epochs (<= epochs).")
    ae_warmup_epochs: StrictInt = _int(3, 0, 100_000, "Autoencoder-only epochs before quantization (< epochs).")
    grad_clip: StrictFloat = _float(1.0, 0.0, 1e6, "Gradient norm clip (0: off).")
    beta: StrictFloat = _float(0.25, 0.0, 10.0, "Commitment loss weight.")
    beta_start: StrictFloat = _float(0.1, 0.0, 10.0, "Commitment weight at the start of its warm-up.")
    beta_warmup_epochs: StrictInt = _int(5, 0, 100_000, "Epochs to raise beta from beta_start (<= epochs).")
    ema: StrictBool = Field(True, description="EMA codebook updates instead of the codebook loss.")
    ema_decay: StrictFloat = _float(0.99, 0.0, 0.99999, "EMA decay.")
    kmeans_iters: StrictInt = _int(25, 1, 1000, "k-means iterations of the codebook initialisation.")
    kmeans_sample: StrictInt = _int(65536, 2, 1 << 24, "Items sampled for the k-means initialisation.")
    kmeans_restarts: StrictInt = _int(3, 1, 100, "k-means restarts (the best inertia wins).")
    kmeans_balance_from: StrictInt = _int(
        0,
        0,
        8,
        "--tokenizer rqkmeans: the levels from this one on (1: the first) are fitted by balanced k-means, each code "
        "taking about the same share of the items; their offsets are kept in the checkpoint, so encoding assigns "
        "codes the same way (0: off; semid.model.balanced_kmeans).",
    )
    dead_code_threshold: StrictFloat = _float(1.0, 0.0, 1e9, "Codes used fewer times per epoch are dead.")
    dead_code_reset_every: StrictInt = _int(1, 0, 100_000, "Reset dead codes every N epochs (0: never).")
    dead_code_reset_until: StrictFloat = _float(0.8, 0.0, 1.0, "Stop resetting after this share of epochs.")
    eval_sample: StrictInt = _int(32768, 1, 1 << 30, "Items sampled for the final quality figures.")
    graph_targets: StrictBool = Field(True, description="Neighbour-aware first level (RQ-VAE only).")
    graph_neighbours: StrictInt = _int(10, 1, 1000, "k of the k-NN graph behind the first-level targets.")
    graph_balance: StrictFloat = _float(1.9, 0.0, 1000.0, "Balance term of the graph-refined targets.")
    graph_sweeps: StrictInt = _int(8, 0, 1000, "Refinement sweeps over the k-NN graph.")
    graph_soft: StrictFloat = _float(0.5, 0.0, 1.0, "Softness of the graph targets (0: hard labels).")
    graph_weight: StrictFloat = _float(1.0, 0.0, 1000.0, "Weight of the graph-target loss.")
    graph_temperature: StrictFloat = _float(0.1, 1e-4, 100.0, "Temperature of the first-level code distances.")
    graph_max_items: StrictInt = _int(1_000_000, 2, 1 << 24, "Larger catalogs build the graph on a seeded sample.")
    graph_exact_items: StrictInt = _int(
        50_000, 0, 1 << 24, "Up to this many items the k-NN graph is exact (O(n^2)); above, approximate (HNSW)."
    )
    graph_min_gain: StrictFloat = _float(
        0.03,
        0.0,
        1.0,
        "Graph targets are used only if refining k-means' labels on the k-NN graph raises the share of neighbours "
        "sharing a label by this much, and only if the trained codes keep that gain over k-means (else over a "
        "run trained without them) (0: always; semid.model.first_level.adaptive).",
    )
    coliked_min_rating: StrictFloat = _float(4.0, -1e9, 1e9, "With --interactions: ratings >= this are likes.")
    coliked_partners: StrictInt = _int(10, 1, 1000, "With --interactions: top co-liked partners kept per item.")
    coliked_min_users: StrictInt = _int(3, 1, 1_000_000, "With --interactions: users who liked both, at least.")
    coliked_weight: StrictFloat = _float(0.75, 0.0, 1000.0, "With --interactions: a partner's vote (a neighbour's: 1).")
    coliked_max_user_likes: StrictInt = _int(500, 2, 1 << 24, "With --interactions: heavier users are sampled down.")
    collab_align: StrictFloat = _float(
        0.0,
        0.0,
        1000.0,
        "With --interactions: weight of the LETTER-style alignment of each item's quantized latent with its "
        "collaborative embedding (truncated SVD of the item-item PPMI of the likes; training.collab; 0: off).",
    )
    collab_temperature: StrictFloat = _float(0.1, 1e-3, 10.0, "Temperature of the alignment's cosine similarities.")
    code_diversity: StrictFloat = _float(
        0.0, 0.0, 1000.0, "Weight of the code-diversity term: 1 - entropy of the batch's mean soft code use / log K."
    )
    seed: StrictInt = _int(0, 0, 2**63 - 1, "Random seed (training is reproducible for a seed).")
    threads: StrictInt = _int(0, 0, 1024, "torch threads (0: the CPUs this process may use; SEMID_THREADS overrides).")

    @staticmethod
    def warm_up_bounds(epochs: int) -> dict[str, int]:
        """The largest value of each warm-up field that ``epochs`` epochs allow."""
        return {"warmup_epochs": epochs, "ae_warmup_epochs": max(0, epochs - 1), "beta_warmup_epochs": epochs}

    @model_validator(mode="after")
    def _epochs_bound_the_warm_ups(self) -> TrainConfig:
        for name, high in self.warm_up_bounds(self.epochs).items():
            value = getattr(self, name)
            if value > high:
                flag = "--" + name.replace("_", "-")
                raise ValueError(
                    f"{name} is {value}; expected a value in [0, {high}] (epochs is {self.epochs}; set {flag})"
                )
        return self


SECTIONS: dict[str, type[BaseModel]] = {"model": ModelConfig, "train": TrainConfig}


class SemidConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    def validate(self) -> SemidConfig:  # type: ignore[override]
        """Checked again as a whole (fields are checked on construction and assignment)."""
        return SemidConfig.from_dict(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.model_dump(), "train": self.train.model_dump()}

    @classmethod
    def from_dict(cls, data: Any) -> SemidConfig:
        if not isinstance(data, dict):
            raise ValueError("config must be a JSON object with 'model' and/or 'train' sections")
        unknown = set(data) - set(SECTIONS)
        if unknown:
            raise ValueError(f"config has unknown section(s) {sorted(unknown)}; expected 'model' and 'train'")
        sections = {}
        for name, kind in SECTIONS.items():
            values = data.get(name, {})
            if not isinstance(values, dict):
                raise ValueError(f"config section {name!r} must be an object")
            sections[name] = _build(kind, values, name)
        _check_across_sections(sections["model"], sections["train"])  # type: ignore[arg-type]
        return cls(**sections)

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
        data = self.to_dict()
        data[section].update({k: v for k, v in values.items() if v is not None})
        return SemidConfig.from_dict(data)


def _check_across_sections(model: ModelConfig, train: TrainConfig) -> None:
    """Checks that need both sections, as one-line ValueErrors naming the field."""
    balance_from = train.kmeans_balance_from
    if balance_from and model.tokenizer != "rqkmeans":
        raise ValueError(
            f"train.kmeans_balance_from is {balance_from}; balanced levels need --tokenizer rqkmeans "
            "(the RQ-VAE trains its codebooks after the k-means start; set 0)"
        )
    if balance_from > model.levels:
        raise ValueError(
            f"train.kmeans_balance_from is {balance_from}; expected a level in [0, {model.levels}] "
            f"(model.levels is {model.levels})"
        )


def _build(kind: type[BaseModel], values: dict[str, Any], section: str) -> BaseModel:
    """The section, or a ValueError naming the first bad field in one line."""
    try:
        return kind.model_validate(values)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            raise ValueError(f"config {section} has unknown field {where!r}") from None
        message = first["msg"].removeprefix("Value error, ")
        if not where:  # a check across fields: the message names them
            raise ValueError(f"{section}: {message}") from None
        raise ValueError(f"{section}.{where}: {message} (got {first.get('input')!r})") from None


@dataclass(frozen=True)
class ConfigField:
    """One declared field, as the CLI sees it."""

    section: str
    name: str
    info: FieldInfo

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def config_fields(*, exclude: tuple[str, ...] = ()) -> Iterator[ConfigField]:
    """Every field of every section, in declaration order (for generated CLI flags)."""
    for section, kind in SECTIONS.items():
        for name, info in kind.model_fields.items():
            if name not in exclude:
                yield ConfigField(section, name, info)


def clamp_warm_ups(train: TrainConfig, epochs: int, given: Iterable[str] = ()) -> dict[str, int]:
    """Warm-up fields of ``train`` lowered to fit a shorter run of ``epochs`` (those not in ``given``, the
    fields the user set): ``{field: new value}`` to pass with ``epochs`` to ``with_overrides``."""
    bounds = TrainConfig.warm_up_bounds(epochs)
    return {n: high for n, high in bounds.items() if n not in given and getattr(train, n) > high}
