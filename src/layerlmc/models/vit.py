"""A small Vision Transformer for the paper's ViT study (PAPER.md §2.6).

Patch embedding ``patch_embed`` (a convolution with stride = kernel = patch), a class token
``cls_token``, learned positions ``pos_embed``, pre-LN blocks ``blocks.K`` (``norm1``,
``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``), a final ``norm`` and
``head`` on the class token.

Every weight matrix is a module of its own with its bias beside it, so the per-tensor grouping
of the paper's ViT study (``--per-tensor``: each weight with its bias) gives one group per
matrix: the query/key/value projection is one tensor ``attn.qkv`` as in the paper's
``to_qkv``. The paper's ``SimpleViT`` (vit_pytorch) differs in fixed sin-cos positions and
mean pooling instead of a class token; the study's question (which tensors are sensitive to
the averaging direction) does not depend on either.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.permutations import Axis, PermutationGroup, register_spec
from ..errors import LayerLMCError
from ..registry import models


class Attention(nn.Module):
    """Multi-head self-attention: ``qkv`` (dim → 3·dim) and ``proj`` (dim → dim)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).view(batch, tokens, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [batch, heads, tokens, head_dim]
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class MLP(nn.Module):
    """``fc1`` (dim → mlp_dim), GELU, ``fc2`` (mlp_dim → dim)."""

    def __init__(self, dim: int, mlp_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Images ``[batch, in_channels, image_size, image_size]`` → logits ``[batch, num_classes]``
    through ``(image_size / patch_size)² + 1`` tokens of width ``dim``."""

    def __init__(self, image_size: int = 28, patch_size: int = 7, in_channels: int = 1,
                 num_classes: int = 10, dim: int = 64, depth: int = 4, heads: int = 4,
                 mlp_dim: int = 128):
        super().__init__()
        if min(image_size, patch_size, dim, depth, heads, mlp_dim) < 1:
            raise LayerLMCError("ViT sizes must be positive")
        if image_size % patch_size:
            raise LayerLMCError(
                f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        if dim % heads:
            raise LayerLMCError(f"dim {dim} is not a multiple of heads {heads}")
        self.image_size = image_size
        patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, patches + 1, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise LayerLMCError(f"this ViT takes {self.image_size}×{self.image_size} images, got "
                                f"{x.shape[-2]}×{x.shape[-1]}")
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # [batch, patches, dim]
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


@models.register(
    "vit",
    "ViT: patch_embed, cls_token, pos_embed, blocks.K (norm1, attn.qkv, attn.proj, norm2, "
    "mlp.fc1, mlp.fc2), norm, head (image_size=28, patch_size=7, in_channels=1, "
    "num_classes=10, dim=64, depth=4, heads=4, mlp_dim=128)",
)
def vit(image_size: int = 28, patch_size: int = 7, in_channels: int = 1, num_classes: int = 10,
        dim: int = 64, depth: int = 4, heads: int = 4, mlp_dim: int = 128) -> ViT:
    """A pre-LN ViT; the defaults take Fashion-MNIST (17 tokens, 0.14M parameters); for
    CIFAR-10 use ``image_size=32 patch_size=4 in_channels=3`` (the paper: dim 512, depth 6,
    heads 16, mlp_dim 1024)."""
    return ViT(image_size, patch_size, in_channels, num_classes, dim, depth, heads, mlp_dim)


def attention_heads(prefix: str, heads: int, dim: int, state_keys, qkv: str = "qkv",
                    proj: str = "proj") -> PermutationGroup:
    """The heads of one attention layer, permuted as wholes: the rows of ``qkv`` are
    ``(q|k|v, head, head_dim)`` and the columns of ``proj`` ``(head, head_dim)``, so moving
    head h moves its query, key and value rows and its output columns together."""
    block = dim // heads
    axes = [Axis(f"{prefix}.{qkv}.weight", 0, 3, block)]
    if f"{prefix}.{qkv}.bias" in state_keys:
        axes.append(Axis(f"{prefix}.{qkv}.bias", 0, 3, block))
    axes.append(Axis(f"{prefix}.{proj}.weight", 1, 1, block))
    return PermutationGroup(f"{prefix}.heads", heads, tuple(axes))


def hidden_units(prefix: str, size: int, state_keys, inner: str, outer: str) -> PermutationGroup:
    """The hidden units of an MLP ``outer(act(inner(x)))``."""
    axes = [Axis(f"{prefix}.{inner}.weight", 0)]
    if f"{prefix}.{inner}.bias" in state_keys:
        axes.append(Axis(f"{prefix}.{inner}.bias", 0))
    axes.append(Axis(f"{prefix}.{outer}.weight", 1))
    return PermutationGroup(f"{prefix}.{inner}", size, tuple(axes), ((f"{prefix}.{inner}", -1),))


def vit_spec(model: ViT) -> tuple[PermutationGroup, ...]:
    """Each block's attention heads (as wholes) and MLP hidden units. The residual stream
    (patch embedding, positions, norms, head) is left unpermuted: permuting it is a symmetry
    too, but one shared by every block, and git re-basin's transformer results come from heads
    and MLPs. torch.fx cannot trace this ViT (its input-size check), hence a written spec."""
    keys = model.state_dict().keys()
    spec = []
    for k, block in enumerate(model.blocks):
        spec.append(attention_heads(f"blocks.{k}.attn", block.attn.heads, block.attn.proj.in_features, keys))
        spec.append(hidden_units(f"blocks.{k}.mlp", block.mlp.fc1.out_features, keys, "fc1", "fc2"))
    return tuple(spec)


register_spec(ViT, vit_spec)
