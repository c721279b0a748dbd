"""A VGGT-style aggregator: alternating frame / global attention with camera and register tokens.

Mirrors ``vggt/models/aggregator.py`` (facebookresearch/vggt) in structure and parameter names —
``camera_token (1, 2, 1, C)``, ``register_token (1, 2, R, C)``, ``frame_blocks.N.*``,
``global_blocks.N.*`` — so VGGT's ``aggregator.*`` weights load by key. Unlike VGGT, the patch
embedding lives outside (AtlasVLA fuses language into the patch tokens first), so ``forward`` takes
patch tokens ``[B, S, P, C]`` and their grid shape.

Per frame the tokens are ``[camera, R registers, patches]``; slot 0 of the special tokens goes to the
first frame, slot 1 to every other frame. Special tokens get RoPE position (0, 0), patches (row+1,
col+1). A frame block attends within each frame, a global block across all frames; after each pair the
two outputs are concatenated, giving ``[B, S, 1+R+P, 2C]`` per layer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from atlasva.vla.layers import Block, RotaryPositionEmbedding2D, grid_positions


class Aggregator(nn.Module):
    def __init__(
        self, embed_dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0, num_register_tokens: int = 4,
        qk_norm: bool = True, rope_freq: float = 100.0, init_values: float = 0.01, aa_block_size: int = 1,
    ) -> None:
        super().__init__()
        if depth % aa_block_size:
            raise ValueError(f"depth {depth} must be a multiple of aa_block_size {aa_block_size}")
        self.embed_dim = embed_dim
        self.depth = depth
        self.aa_block_size = aa_block_size
        self.num_register_tokens = num_register_tokens
        self.patch_start_idx = 1 + num_register_tokens
        self.rope = RotaryPositionEmbedding2D(rope_freq) if rope_freq > 0 else None

        def make() -> Block:
            return Block(embed_dim, num_heads, mlp_ratio, qk_norm=qk_norm, rope=self.rope, init_values=init_values)

        self.frame_blocks = nn.ModuleList([make() for _ in range(depth)])
        self.global_blocks = nn.ModuleList([make() for _ in range(depth)])
        self.camera_token = nn.Parameter(torch.randn(1, 2, 1, embed_dim) * 1e-6)
        self.register_token = nn.Parameter(torch.randn(1, 2, num_register_tokens, embed_dim) * 1e-6)

    @staticmethod
    def _special(token: Tensor, batch: int, frames: int) -> Tensor:
        first = token[:, :1].expand(batch, 1, *token.shape[2:])
        rest = token[:, 1:].expand(batch, frames - 1, *token.shape[2:])
        return torch.cat([first, rest], dim=1)  # [B, S, n, C]

    def forward(self, patch_tokens: Tensor, grid: tuple[int, int]) -> list[Tensor]:
        """patch_tokens: [B, S, P, C] with P = rows*cols. Returns one [B, S, 1+R+P, 2C] per layer pair."""
        if patch_tokens.dim() != 4:
            raise ValueError(f"aggregator expects [B, S, P, C] tokens, got shape {tuple(patch_tokens.shape)}")
        b, s, p, c = patch_tokens.shape
        rows, cols = grid
        if rows * cols != p or c != self.embed_dim:
            raise ValueError(f"aggregator expects P={rows}x{cols} tokens of width {self.embed_dim}, got {p} of width {c}")
        special = torch.cat([self._special(self.camera_token, b, s), self._special(self.register_token, b, s)], dim=2)
        tokens = torch.cat([special.to(patch_tokens.dtype), patch_tokens], dim=2)  # [B, S, T, C]
        t = tokens.shape[2]
        pos = grid_positions(b * s, rows, cols, tokens.device) + 1
        pos = torch.cat([torch.zeros(b * s, self.patch_start_idx, 2, dtype=pos.dtype, device=pos.device), pos], dim=1)

        outputs: list[Tensor] = []
        x = tokens
        for start in range(0, self.depth, self.aa_block_size):
            frame_out, global_out = [], []
            xf = x.reshape(b * s, t, c)
            for blk in self.frame_blocks[start : start + self.aa_block_size]:
                xf = blk(xf, pos=pos)
                frame_out.append(xf.reshape(b, s, t, c))
            xg = xf.reshape(b, s * t, c)
            gpos = pos.reshape(b, s * t, 2)
            for blk in self.global_blocks[start : start + self.aa_block_size]:
                xg = blk(xg, pos=gpos)
                global_out.append(xg.reshape(b, s, t, c))
            x = xg.reshape(b, s, t, c)
            for fo, go in zip(frame_out, global_out):
                outputs.append(torch.cat([fo, go], dim=-1))
        return outputs
