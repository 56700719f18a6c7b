"""Reference architectures of the protocol, each with the duck-typed interface.

Every model computes ``h_0 = embed(x)``, ``h_{l+1} = h_l + f_l(h_l)`` for its blocks and ``logits = head(norm(h_L))``;
``model(x, return_hidden=True)`` returns ``(logits, [h_0, ..., h_L])``. ``build_model(name, **config)`` rebuilds
one from the ``model.config`` a bundle records; ``load_weights`` loads any model and says what does not fit.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from pytest_fa.errors import CheckpointError, setting

Shape = tuple[int, ...]


class ReferenceModel(nn.Module):
    """Shared forward pass over ``embed`` → ``blocks`` → ``norm`` → ``head``; by default ``embed``
    reads the flattened input and ``head`` the last hidden state."""

    arch: str = ""

    def __init__(self, **config: Any) -> None:
        super().__init__()
        config["input_shape"] = list(config["input_shape"])
        self.config = config

    def embed_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x.flatten(1))

    def read_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(h)

    def forward(self, x: torch.Tensor, return_hidden: bool = False):
        h = self.embed_input(x)
        hiddens = [h]
        for block in self.blocks:
            h = h + block(h)
            hiddens.append(h)
        logits = self.read_logits(h)
        return (logits, hiddens) if return_hidden else logits


class MLPBlock(nn.Module):
    """Pre-LN residual branch ``f(h) = w2(GELU(w1(LN(h))))`` with ``w2`` started near zero."""

    def __init__(self, d: int, norm: bool = True) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d) if norm else nn.Identity()
        self.w1 = nn.Linear(d, d)
        self.w2 = nn.Linear(d, d)
        nn.init.normal_(self.w2.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.w2.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.w2(nn.functional.gelu(self.w1(self.ln(h))))


class ResMLP(ReferenceModel):
    """The audit model: flatten → ``Linear(d_in, d)`` → L pre-LN MLP blocks → LN → head."""

    arch = "resmlp"

    def __init__(self, input_shape: Shape, num_classes: int, d: int = 256, depth: int = 4) -> None:
        super().__init__(input_shape=input_shape, num_classes=num_classes, d=d, depth=depth)
        self.embed = nn.Linear(math.prod(input_shape), d)
        self.blocks = nn.ModuleList(MLPBlock(d) for _ in range(depth))
        self.out_ln = nn.LayerNorm(d)
        self.out_head = nn.Linear(d, num_classes)

    def read_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.out_head(self.out_ln(h))


class StudentNet(ReferenceModel):
    """Teacher-student model: ``Linear`` embedding, L pre-LN MLP blocks, no terminal norm."""

    arch = "studentnet"

    def __init__(self, input_shape: Shape, num_classes: int, d: int = 128, depth: int = 4) -> None:
        super().__init__(input_shape=input_shape, num_classes=num_classes, d=d, depth=depth)
        self.embed = nn.Linear(math.prod(input_shape), d)
        self.blocks = nn.ModuleList(MLPBlock(d) for _ in range(depth))
        self.head = nn.Linear(d, num_classes)


def _signal_shape(input_shape: Shape) -> Shape:
    """``(C, *spatial)``: a 1-D signal ``(L,)`` becomes one channel ``(1, L)``."""
    return (1, *input_shape) if len(input_shape) == 1 else tuple(input_shape)


def _conv(spatial_dims: int) -> type[nn.Module]:
    return {1: nn.Conv1d, 2: nn.Conv2d}[spatial_dims]


class TransformerBlock(nn.Module):
    """Pre-LN attention + MLP as one residual branch: ``f(h) = a + m(LN(h + a))``, ``a = attn(LN(h))``."""

    def __init__(self, d: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, mlp_ratio * d), nn.GELU(), nn.Linear(mlp_ratio * d, d))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        q = self.ln1(h)
        a = self.attn(q, q, q, need_weights=False)[0]
        return a + self.mlp(self.ln2(h + a))


class ViTMini(ReferenceModel):
    """Patch embedding + cls token + positions, L pre-LN transformer blocks, terminal LN; images
    ``(C, H, W)`` use square patches, 1-D signals ``(L,)`` 1-D patches."""

    arch = "vit-mini"
    hidden_layout = "tokens_all"

    def __init__(self, input_shape: Shape, num_classes: int, d: int = 128, depth: int = 4, heads: int = 4,
                 patch: int = 4, mlp_ratio: int = 2) -> None:
        super().__init__(input_shape=input_shape, num_classes=num_classes, d=d, depth=depth, heads=heads,
                         patch=patch, mlp_ratio=mlp_ratio)
        channels, *spatial = _signal_shape(input_shape)
        if any(size % patch for size in spatial):
            raise ValueError(f"input size {spatial} is not divisible by patch={patch}")
        tokens = math.prod(size // patch for size in spatial)
        self.patch_embed = _conv(len(spatial))(channels, d, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, d) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(d, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, num_classes)
        self._signal = _signal_shape(input_shape)

    def embed_input(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(x.reshape(x.shape[0], *self._signal)).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return torch.cat([cls, patches], dim=1) + self.pos_embed

    def read_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(h)[:, 0])


class ConvBlock(nn.Module):
    """Pre-activation residual branch ``f(h) = conv(ReLU(BN(h)))``."""

    def __init__(self, channels: int, spatial_dims: int) -> None:
        super().__init__()
        bn = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}[spatial_dims]
        self.bn = bn(channels)
        self.conv = _conv(spatial_dims)(channels, channels, kernel_size=3, padding=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.relu(self.bn(h)))


class SmallCNN(ReferenceModel):
    """Conv stem, 3 residual conv + BatchNorm blocks, pooled FC + head; no terminal norm."""

    arch = "smallcnn"
    hidden_layout = "spatial"

    def __init__(self, input_shape: Shape, num_classes: int, channels: int = 32, depth: int = 3, fc: int = 128) -> None:
        super().__init__(input_shape=input_shape, num_classes=num_classes, channels=channels, depth=depth, fc=fc)
        in_channels, *spatial = _signal_shape(input_shape)
        dims = len(spatial)
        stride = 2 if dims == 2 else 1
        self.embed = _conv(dims)(in_channels, channels, kernel_size=3, stride=stride, padding=1)
        self.blocks = nn.ModuleList(ConvBlock(channels, dims) for _ in range(depth))
        pool = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d}[dims]
        self.head = nn.Sequential(pool(1), nn.Flatten(), nn.Linear(channels, fc), nn.ReLU(), nn.Linear(fc, num_classes))
        self._signal = _signal_shape(input_shape)

    def embed_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x.reshape(x.shape[0], *self._signal))


ARCHITECTURES: dict[str, type[ReferenceModel]] = {cls.arch: cls for cls in (ResMLP, ViTMini, SmallCNN, StudentNet)}


def build_model(arch: str, **config: Any) -> ReferenceModel:
    """Rebuild a reference model from its name and recorded configuration."""
    try:
        cls = ARCHITECTURES[arch]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise CheckpointError(
            f"unknown architecture {arch!r}; pytest-fa ships {known}. For your own model pass "
            f"{setting('model', 'package.module:build')}"
        ) from None
    try:
        return cls(**config)
    except (TypeError, ValueError, RuntimeError, KeyError, AssertionError) as exc:
        raise CheckpointError(f"cannot build {arch!r} from config {config!r}: {exc}") from exc


def load_weights(model: nn.Module, state_dict: dict[str, Any], source: str) -> nn.Module:
    """``model.load_state_dict(state_dict, strict=True)`` with the mismatch spelled out."""
    if not isinstance(state_dict, dict):
        raise CheckpointError(
            f"{source}: the state dict is a {type(state_dict).__name__}, not a dict of tensors; "
            "save model.state_dict()"
        )
    if not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{source}: the state dict holds values that are not tensors")
    expected = model.state_dict()
    shared = [k for k in expected if k in state_dict]
    missing, unexpected = sorted(set(expected) - set(state_dict)), sorted(set(state_dict) - set(expected))
    mismatched = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in shared if state_dict[k].shape != expected[k].shape]
    cut = [f"{k}: checkpoint {state_dict[k].dtype} into model {expected[k].dtype}"
           for k in shared if _lossy(state_dict[k].dtype, expected[k].dtype)]
    parts = [f"{what} keys {keys[:5]}{' …' if len(keys) > 5 else ''}"
             for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
    parts += [f"{what} {'; '.join(found[:3])}" for what, found in (
        ("shape mismatch", mismatched), ("a dtype the copy would cut (the imaginary part, the fraction)", cut),
    ) if found]
    if parts:
        raise CheckpointError(
            f"{source}: the state dict does not match {type(model).__name__}: "
            + ", ".join(parts)
            + f". Check the architecture config (or {setting('model')}) against the one that was trained"
        )
    model.load_state_dict(state_dict, strict=True)
    return model


def _lossy(source: torch.dtype, target: torch.dtype) -> bool:
    """Copying ``source`` into ``target`` drops part of each value: complex into real, float into integer."""
    return (source.is_complex and not target.is_complex) or (
        source.is_floating_point and not (target.is_floating_point or target.is_complex)
    )
