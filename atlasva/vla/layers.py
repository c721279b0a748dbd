"""Transformer building blocks with VGGT's / DINOv2's attribute names.

The names matter: ``Block`` owns ``norm1, attn (qkv, q_norm, k_norm, proj), ls1 (gamma), norm2,
mlp (fc1, fc2), ls2 (gamma)`` exactly as VGGT's ``frame_blocks`` / ``global_blocks`` and DINOv2's
``blocks`` do, so their state dicts load by key. 2-D RoPE splits each head's features in two halves,
the first rotated by the row position and the second by the column position (frequency base 100,
as VGGT uses).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RotaryPositionEmbedding2D(nn.Module):
    """2-D rotary embedding: half the head dim encodes the row, half the column."""

    def __init__(self, frequency: float = 100.0) -> None:
        super().__init__()
        self.base = float(frequency)

    def _rotate_1d(self, x: Tensor, pos: Tensor) -> Tensor:
        # x: [B, H, N, d] with d even; pos: [B, N] integer positions
        d = x.shape[-1]
        inv_freq = 1.0 / (self.base ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d))
        angles = pos.to(torch.float32)[..., None] * inv_freq  # [B, N, d/2]
        angles = torch.cat([angles, angles], dim=-1)[:, None]  # [B, 1, N, d]
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        rotated = torch.cat([-x2, x1], dim=-1)
        return x * cos + rotated * sin

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """x: [B, heads, N, head_dim]; positions: [B, N, 2] (row, col)."""
        if x.shape[-1] % 4:
            raise ValueError(f"2-D RoPE needs a head dim divisible by 4, got {x.shape[-1]}")
        rows, cols = x.chunk(2, dim=-1)
        return torch.cat([self._rotate_1d(rows, positions[..., 0]), self._rotate_1d(cols, positions[..., 1])], dim=-1)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float = 0.01) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention with optional qk-norm (LayerNorm over the head dim) and 2-D RoPE."""

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool = True, proj_bias: bool = True, qk_norm: bool = False,
        rope: RotaryPositionEmbedding2D | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.rope = rope

    def forward(self, x: Tensor, pos: Tensor | None = None) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None and pos is not None:
            q, k = self.rope(q, pos), self.rope(k, pos)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block: x + ls1(attn(norm1 x)); x + ls2(mlp(norm2 x))."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qk_norm: bool = False,
        rope: RotaryPositionEmbedding2D | None = None, init_values: float | None = 0.01,
        qkv_bias: bool = True, proj_bias: bool = True, ffn_bias: bool = True,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias, qk_norm=qk_norm, rope=rope)
        self.ls1: nn.Module = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), bias=ffn_bias)
        self.ls2: nn.Module = LayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(self, x: Tensor, pos: Tensor | None = None) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), pos=pos))
        return x + self.ls2(self.mlp(self.norm2(x)))


class CrossBlock(nn.Module):
    """Queries attend to a context (pre-norm, residual), then an MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, self_attn: bool = False) -> None:
        super().__init__()
        self.self_attn = Block(dim, num_heads, mlp_ratio, init_values=None) if self_attn else None
        self.norm_q = nn.LayerNorm(dim, eps=1e-6)
        self.norm_kv = nn.LayerNorm(dim, eps=1e-6)
        self.cross = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, context: Tensor, context_pad: Tensor | None = None) -> Tensor:
        if self.self_attn is not None:
            x = self.self_attn(x)
        kv = self.norm_kv(context)
        attn, _ = self.cross(self.norm_q(x), kv, kv, key_padding_mask=context_pad, need_weights=False)
        x = x + attn
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Non-overlapping conv patch embedding: [B,3,H,W] -> [B, (H/p)(W/p), C]."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def grid_positions(batch: int, rows: int, cols: int, device: torch.device | None = None) -> Tensor:
    """[batch, rows*cols, 2] integer (row, col) positions, row-major."""
    r = torch.arange(rows, device=device)
    c = torch.arange(cols, device=device)
    pos = torch.stack(torch.meshgrid(r, c, indexing="ij"), dim=-1).reshape(rows * cols, 2)
    return pos[None].expand(batch, -1, -1)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of scalar times t: [B] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * 1000.0 * freqs[None]
    emb = torch.cat([args.cos(), args.sin()], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb
