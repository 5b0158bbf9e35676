"""The tokenizer: normaliser -> encoder -> residual quantizer -> decoder.

RQ-VAE uses MLPs for the encoder and decoder; RQ-KMeans is the same object with identity
encoder and decoder, so both share the inference API and the checkpoint format.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from semid.model.config import ModelConfig, TrainConfig
from semid.model.first_level.anchors import FirstLevelAnchors
from semid.model.tokenizers.normalizer import InputNormalizer
from semid.model.tokenizers.quantizer import QuantizedResult, ResidualQuantizer

_ACTIVATIONS = {"silu": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU}


def build_mlp(dims: list[int], *, layer_norm: str, activation: str, dropout: float = 0.0) -> nn.Sequential:
    """Linear + normalisation + activation for every hidden layer, a plain Linear at the end."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(dims) - 2:
            if layer_norm == "batchnorm":
                layers.append(nn.BatchNorm1d(d_out))
            elif layer_norm == "layernorm":
                layers.append(nn.LayerNorm(d_out))
            layers.append(_ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


@dataclass
class ForwardResult:
    reconstruction: torch.Tensor
    quantized: QuantizedResult
    recon_loss: torch.Tensor
    target: torch.Tensor  # the normalised input
    latent: torch.Tensor  # the encoder's output, before quantization


@dataclass
class EncodeResult:
    codes: torch.Tensor  # long [N, L]
    distances: torch.Tensor  # [N, L] squared distance of each level's residual to its code
    alternatives: torch.Tensor  # long [N, C]: the last level's nearest codes, best first


class SemanticTokenizer(nn.Module):
    def __init__(
        self,
        *,
        normalizer: InputNormalizer,
        encoder: nn.Module,
        quantizer: ResidualQuantizer,
        decoder: nn.Module,
        anchors: FirstLevelAnchors | None = None,
    ):
        super().__init__()
        self.normalizer = normalizer
        self.encoder = encoder
        self.quantizer = quantizer
        self.decoder = decoder
        self.anchors = anchors  # None: the first code is the nearest centroid (checkpoints before anchors)

    def forward(self, x: torch.Tensor, first_codes: torch.Tensor | None = None) -> ForwardResult:
        target = self.normalizer(x)
        z = self.encoder(target)
        q = self.quantizer(z, first_codes)
        recon = self.decoder(q.quantized)
        recon_loss = F.mse_loss(recon, target, reduction="none").sum(1).mean()
        return ForwardResult(reconstruction=recon, quantized=q, recon_loss=recon_loss, target=target, latent=z)

    @torch.inference_mode()
    def latent(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.normalizer(x))

    @torch.inference_mode()
    def encode(self, x: torch.Tensor, *, alternatives: int = 1) -> EncodeResult:
        """Embeddings [N, D] -> codes [N, L] (+ distances and last-level alternatives).

        With anchors, the first code is their k-NN vote (semid.model.first_level.anchors) where it is decided."""
        target = self.normalizer(x)
        first = None
        if self.anchors is not None and self.anchors.size:
            first = self.anchors.vote(target, self.quantizer.codebooks[0], raw=x)
        codes, dists, alt = self.quantizer.encode(self.encoder(target), alternatives=alternatives, first_codes=first)
        return EncodeResult(codes=codes, distances=dists, alternatives=alt)

    @torch.inference_mode()
    def decode_latent(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [N, L] -> the quantized latent (sum of code vectors)."""
        return self.quantizer.decode(codes)

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [N, L] -> reconstruction of the normalised input."""
        return self.decoder(self.quantizer.decode(codes))


def build_tokenizer(model_cfg: ModelConfig, train_cfg: TrainConfig | None = None) -> SemanticTokenizer:
    train_cfg = train_cfg or TrainConfig()
    normalizer = InputNormalizer(mode=model_cfg.normalization, dim=model_cfg.input_dim)
    if model_cfg.tokenizer == "rqkmeans":
        encoder: nn.Module = nn.Identity()
        decoder: nn.Module = nn.Identity()
    else:
        dims = [model_cfg.input_dim, *model_cfg.hidden_dims, model_cfg.latent_dim]
        kw = {"layer_norm": model_cfg.layer_norm, "activation": model_cfg.activation, "dropout": model_cfg.dropout}
        encoder = build_mlp(dims, **kw)
        decoder = build_mlp(dims[::-1], **kw)
    quantizer = ResidualQuantizer(
        levels=model_cfg.levels,
        codebook_size=model_cfg.codebook_size,
        dim=model_cfg.code_dim,
        ema=train_cfg.ema and model_cfg.tokenizer == "rqvae",
        ema_decay=train_cfg.ema_decay,
    )
    anchors = None
    if model_cfg.tokenizer == "rqvae" and model_cfg.first_level_anchors > 0:
        anchors = FirstLevelAnchors(
            model_cfg.input_dim,
            neighbours=model_cfg.anchor_neighbours,
            min_share=model_cfg.anchor_min_share,
            balance=model_cfg.anchor_balance,
            rank_scale=model_cfg.anchor_rank_scale,
        )
    return SemanticTokenizer(
        normalizer=normalizer, encoder=encoder, quantizer=quantizer, decoder=decoder, anchors=anchors
    )
