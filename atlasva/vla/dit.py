"""A cross-attention DiT action head (AtomVLA's action expert, GR00T-style), trained by flow matching.

::

    noisy chunk x_t [B, H, A] ─► linear + learned position ─► h [B, H, D]
    flow time t ─► sinusoid ─► MLP ─┐
    keypoints ⊕ state offset [B, D] ─┴► c [B, D]   (the policy's ``Encoding.query``; zero without keypoints)
    block i (i = 0 … depth−1):
        h += gate₁(c) · SelfAttn(AdaLN(h; shift₁(c), scale₁(c)))
        h += CrossAttn(h → fused context tokens)               only in even blocks: every other block
        h += gate₂(c) · MLP(AdaLN(h; shift₂(c), scale₂(c)))
    AdaLN(h; c) ─► linear ─► velocity v(x_t, t) [B, H, A]

AdaLN-Zero (Peebles & Xie): the modulation layers and the output projection start at zero, so every
block starts as the identity and the untrained head predicts zero velocity. Times follow the policy's
convention (t = 1 noise, x_t = t·noise + (1 − t)·action; training times from
:func:`atlasva.vla.model.flow_times`, towards the noise end), sampling is Euler from t = 1 to 0.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from atlasva.vla.layers import Mlp, timestep_embedding


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class DiTBlock(nn.Module):
    """AdaLN-modulated self-attention and MLP over the action tokens, with an optional cross-attention
    to the context between them."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, cross: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.cross: nn.MultiheadAttention | None = None
        if cross:
            self.norm_q = nn.LayerNorm(dim, eps=1e-6)
            self.norm_kv = nn.LayerNorm(dim, eps=1e-6)
            self.cross = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: Tensor, c: Tensor, context: Tensor, pad: Tensor | None) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c)[:, None].chunk(6, dim=-1)  # each [B, 1, D]
        h = modulate(self.norm1(x), shift1, scale1)
        x = x + gate1 * self.attn(h, h, h, need_weights=False)[0]
        if self.cross is not None:
            kv = self.norm_kv(context)
            x = x + self.cross(self.norm_q(x), kv, kv, key_padding_mask=pad, need_weights=False)[0]
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))


class DiTActionHead(nn.Module):
    """v(x_t, t | context, cond): the velocity of a chunk [B, H, A] at flow time t [B]."""

    def __init__(self, action_dim: int, chunk: int, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"the DiT head needs ≥ 2 blocks (cross-attention every other block), got {depth}")
        self.dim, self.chunk, self.action_dim = dim, chunk, action_dim
        self.x_in = nn.Linear(action_dim, dim)
        self.pos = nn.Parameter(torch.randn(chunk, dim) * 0.02)
        self.t_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList([DiTBlock(dim, heads, mlp_ratio, cross=i % 2 == 0) for i in range(depth)])
        self.final_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.out = nn.Linear(dim, action_dim)
        for layer in (self.final_ada[1], self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x_t: Tensor, t: Tensor, context: Tensor, pad: Tensor | None = None,
                cond: Tensor | None = None) -> Tensor:
        """``x_t`` [B, H, A], ``t`` [B], ``context`` [B, N, D] (``pad`` [B, N], True = padding), ``cond``
        [B, D] added to the time embedding → velocity [B, H, A]."""
        if x_t.shape[1:] != (self.chunk, self.action_dim):
            raise ValueError(f"x_t must be [B, {self.chunk}, {self.action_dim}], got {tuple(x_t.shape)}")
        c = self.t_mlp(timestep_embedding(t, self.dim).to(x_t.dtype))  # [B, D]
        if cond is not None:
            c = c + cond
        h = self.x_in(x_t) + self.pos  # [B, H, D]
        for blk in self.blocks:
            h = blk(h, c, context, pad)
        shift, scale = self.final_ada(c)[:, None].chunk(2, dim=-1)
        return self.out(modulate(self.final_norm(h), shift, scale))
