"""A small GPT-style character language model for the paper's language-model study (PAPER.md §2.4).

The architecture of nanoGPT / llm-baselines' ``base`` model at CPU scale: token embedding
``embed``, learned positions ``pos``, pre-LayerNorm blocks ``blocks.K`` (``ln1``,
``attn.qkv``, ``attn.proj``, ``ln2``, ``mlp.fc``, ``mlp.proj``), a final ``ln_f`` and the
language-model ``head``. Attention is causal, the MLP is 4× wide with GELU, and, as upstream,
linear layers and LayerNorms have no bias by default (``bias=True`` adds them).

Each module is one layer group of the default ``module`` scheme, so the layer-wise study
interpolates the query/key/value projection, the attention output projection, each MLP
matrix and each LayerNorm separately, like the paper's "logic layers" (``c_attn``,
``c_proj``, ``c_fc``, …). Upstream ties ``lm_head`` to the token embedding; here that is
``tie=True`` (off by default so that the embedding and the head are separate layers). A tied
head is the same tensor under two keys, ``embed.weight`` and ``head.weight``; layerlmc keeps
both keys in one layer group (``embed``), so the pair is always interpolated together.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..core.permutations import PermutationGroup, register_spec
from ..errors import LayerLMCError
from ..registry import models


class CausalSelfAttention(nn.Module):
    """Multi-head attention over earlier positions only: ``qkv`` (dim → 3·dim), ``proj``."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, bias: bool = False):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).view(batch, tokens, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [batch, heads, tokens, head_dim]
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.resid_drop(self.proj(out.transpose(1, 2).reshape(batch, tokens, dim)))


class MLP(nn.Module):
    """``fc`` (dim → 4·dim), GELU, ``proj`` (4·dim → dim)."""

    def __init__(self, dim: int, dropout: float = 0.0, bias: bool = False):
        super().__init__()
        self.fc = nn.Linear(dim, 4 * dim, bias=bias)
        self.proj = nn.Linear(4 * dim, dim, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, bias: bool = False):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim, bias=bias)
        self.attn = CausalSelfAttention(dim, heads, dropout, bias)
        self.ln2 = nn.LayerNorm(dim, bias=bias)
        self.mlp = MLP(dim, dropout, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class CharGPT(nn.Module):
    """Token ids ``[batch, T]`` (``T ≤ block_size``) → next-token logits
    ``[batch, T, vocab_size]``."""

    def __init__(self, vocab_size: int = 155, block_size: int = 128, dim: int = 128,
                 depth: int = 4, heads: int = 4, dropout: float = 0.0, bias: bool = False,
                 tie: bool = False):
        super().__init__()
        if min(vocab_size, block_size, dim, depth, heads) < 1:
            raise LayerLMCError(
                "char-gpt sizes (vocab_size, block_size, dim, depth, heads) must be positive")
        if dim % heads:
            raise LayerLMCError(f"char-gpt: dim {dim} is not divisible by heads {heads}")
        if not 0 <= dropout < 1:
            raise LayerLMCError(f"char-gpt: dropout must be in [0, 1), got {dropout}")
        self.block_size = block_size
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos = nn.Embedding(block_size, dim)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, heads, dropout, bias) for _ in range(depth))
        self.ln_f = nn.LayerNorm(dim, bias=bias)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        self.apply(self._init_weights)
        # GPT-2's scaled init of the residual projections keeps the residual stream's variance
        # independent of depth
        for name, param in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.proj.weight")):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * depth))
        if tie:
            self.head.weight = self.embed.weight

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dim() != 2:
            raise LayerLMCError(f"char-gpt takes token ids [batch, T], got shape {list(ids.shape)}")
        tokens = ids.shape[1]
        if tokens > self.block_size:
            raise LayerLMCError(
                f"char-gpt: sequences of {tokens} tokens are longer than block_size "
                f"{self.block_size}")
        positions = torch.arange(tokens, device=ids.device)
        x = self.drop(self.embed(ids) + self.pos(positions))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


@models.register(
    "char-gpt", "GPT-style char LM: embed + pos, pre-LN blocks (attn.qkv/proj, mlp.fc/proj), "
    "ln_f, head (vocab_size=155, block_size=128, dim=128, depth=4, heads=4, tie=false)")
def char_gpt(vocab_size: int = 155, block_size: int = 128, dim: int = 128, depth: int = 4,
             heads: int = 4, dropout: float = 0.0, bias: bool = False,
             tie: bool = False) -> CharGPT:
    return CharGPT(vocab_size, block_size, dim, depth, heads, dropout, bias, tie)


def char_gpt_spec(model: CharGPT) -> tuple[PermutationGroup, ...]:
    """Each block's attention heads (as wholes) and MLP hidden units; the residual stream
    (embeddings, LayerNorms, head) stays unpermuted, as in :func:`~layerlmc.models.vit.vit_spec`."""
    from .vit import attention_heads, hidden_units

    keys = model.state_dict().keys()
    spec = []
    for k, block in enumerate(model.blocks):
        spec.append(attention_heads(f"blocks.{k}.attn", block.attn.heads, block.attn.proj.in_features, keys))
        spec.append(hidden_units(f"blocks.{k}.mlp", block.mlp.fc.out_features, keys, "fc", "proj"))
    return tuple(spec)


register_spec(CharGPT, char_gpt_spec)
