"""Built-in models: plain constructors, and `BUILDERS`, the table that maps each built-in model of the
contract (`lrbs.contract.builtins.BUILTIN_MODELS`) onto them, filling what the data decides."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lrbs.contract.shapes import DataShape

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
}


def linear(in_features: int, out_features: int) -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, out_features))


def mlp(
    in_features: int, out_features: int, hidden: list[int], activation: str, dropout: float, batch_norm: bool
) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for h in hidden:
        layers.append(nn.Linear(width, h))
        if batch_norm:
            layers.append(nn.BatchNorm1d(h))
        layers.append(ACTIVATIONS[activation]())
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


def cnn(in_channels: int, num_classes: int, channels: list[int], dropout: float) -> nn.Sequential:
    """Conv 3×3 → BatchNorm → ReLU → 2×2 max-pool per block, then global average pooling."""
    layers: list[nn.Module] = []
    width = in_channels
    for c in channels:
        layers += [
            nn.Conv2d(width, c, 3, padding=1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
        ]
        width = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(width, num_classes)]
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """Two 3×3 conv+BN layers around a shortcut: identity, or a 1×1 conv+BN where the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def resnet(in_channels: int, num_classes: int, *, depth: int, width: int, stages: int) -> nn.Sequential:
    """CIFAR-style ResNet (He et al. 2016, §4.2): depth basic blocks per stage, channels doubling per stage.

    Every stage after the first starts with stride 2; a 3×3 conv with padding 1 keeps a 1×1 map at 1×1,
    so small inputs (8×8 and up, any number of stages) still work, and global pooling fixes the head size.
    """
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
    ]
    channels = width
    for stage in range(stages):
        out_channels = width * 2**stage
        for block in range(depth):
            stride = 2 if stage > 0 and block == 0 else 1
            layers.append(BasicBlock(channels, out_channels, stride))
            channels = out_channels
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
    return nn.Sequential(*layers)


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        n, t, d = x.shape
        # (N, T, 3·D) → three (N, heads, T, D/heads) tensors
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.resid_dropout(self.proj(out.transpose(1, 2).reshape(n, t, d)))


class TransformerBlock(nn.Module):
    """Pre-norm block (GPT-2): x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d_model: int, heads: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, heads, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp_ratio * d_model),
            nn.GELU(),
            nn.Linear(mlp_ratio * d_model, d_model),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TransformerLM(nn.Module):
    """GPT-style decoder-only language model: (N, T) int64 tokens → (N, T, vocab) next-token logits."""

    def __init__(
        self, vocab_size: int, context: int, layers: int, d_model: int, heads: int, mlp_ratio: int, dropout: float
    ) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by heads ({heads})")
        self.context = context
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(context, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(TransformerBlock(d_model, heads, mlp_ratio, dropout) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.apply(_gpt_init)
        self.head.weight = self.tok_emb.weight  # weight tying (Press & Wolf 2017), as in GPT-2

    def forward(self, idx: Tensor) -> Tensor:
        t = idx.shape[1]
        if t > self.context:
            raise ValueError(
                f"sequence length {t} exceeds the model's context {self.context}; "
                "raise the model's context or shorten the sequences"
            )
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def _gpt_init(module: nn.Module) -> None:
    # N(0, 0.02) as in GPT-2: PyTorch's N(0, 1) embedding init gives huge logits through the tied head.
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def transformer_lm(
    vocab_size: int, context: int, *, layers: int, d_model: int, heads: int, mlp_ratio: int, dropout: float
) -> TransformerLM:
    return TransformerLM(vocab_size, context, layers, d_model, heads, mlp_ratio, dropout)


# ------------------------------------------------------------------------------- spec → network, by name

Builder = Callable[[Any, DataShape], nn.Module]  # (the model's params, the data's shape) -> network


def _flat(shape: DataShape) -> int:
    return math.prod(shape.input_shape)


BUILDERS: dict[str, Builder] = {
    "linear": lambda p, shape: linear(p.in_features or _flat(shape), p.out_features or shape.num_outputs),
    "mlp": lambda p, shape: mlp(
        p.in_features or _flat(shape),
        p.out_features or shape.num_outputs,
        p.hidden,
        p.activation,
        p.dropout,
        p.batch_norm,
    ),
    "cnn": lambda p, shape: cnn(
        p.in_channels or shape.input_shape[0], p.num_classes or shape.num_outputs, p.channels, p.dropout
    ),
    "resnet": lambda p, shape: resnet(
        p.in_channels or shape.input_shape[0],
        p.num_classes or shape.num_outputs,
        depth=p.depth,
        width=p.width,
        stages=p.stages,
    ),
    "transformer_lm": lambda p, shape: transformer_lm(
        p.vocab_size or shape.num_outputs,
        p.context or shape.input_shape[0],
        layers=p.layers,
        d_model=p.d_model,
        heads=p.heads,
        mlp_ratio=p.mlp_ratio,
        dropout=p.dropout,
    ),
}
