"""Vision and text encoders for AtlasVLA.

Vision: a bare conv patch embedding with learned positions (``patch``), a convolutional stem with the
same token grid (``conv``), or a DINOv2-style ViT with
register tokens (``vit``) whose parameter names match DINOv2 / VGGT's ``aggregator.patch_embed.*``
(``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``register_tokens``, ``mask_token``,
``blocks.N.*``, ``norm``), so a VGGT checkpoint or a local DINOv2 safetensors file loads by key.

Text: a causal LM used as an encoder (last hidden states). Either any local transformers checkpoint
(``AutoModel`` / ``AutoTokenizer`` with ``local_files_only=True`` — never a hub download) or a tiny
``Qwen3Model`` built from a config with a byte-level tokenizer, so everything runs offline.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from atlasva.vla.layers import Block, PatchEmbed


class PatchVisionEncoder(nn.Module):
    def __init__(self, image_size: int, patch_size: int, dim: int) -> None:
        super().__init__()
        self.grid = (image_size // patch_size, image_size // patch_size)
        self.patch_embed = PatchEmbed(patch_size, dim)
        self.pos_embed = nn.Parameter(torch.randn(1, self.grid[0] * self.grid[1], dim) * 0.02)
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.patch_embed(x) + self.pos_embed)


def conv_stem_stages(patch_size: int) -> int:
    """The number of stride-2 stages a conv stem needs to reach ``patch_size`` (a power of two ≥ 2)."""
    stages = patch_size.bit_length() - 1
    if patch_size < 2 or 1 << stages != patch_size:
        raise ValueError(f"vision='conv' needs a power-of-two patch_size (≥ 2), got {patch_size}")
    return stages


class ConvStemVisionEncoder(nn.Module):
    """A convolutional stem ("early convolutions", Xiao et al. 2021) in place of the one-shot patch projection:
    log2(patch_size) stride-2 4×4 convolutions (even kernels keep each token centred on its patch), each
    followed by GroupNorm and GELU, then a 1×1 projection.
    Same token grid as ``patch``; small objects (reach-v3's 2 cm goal is 1–2 pixels at 96 px) survive the
    downsampling instead of being averaged into a 16×16 patch by one linear map."""

    def __init__(self, image_size: int, patch_size: int, dim: int, width: int = 32) -> None:
        super().__init__()
        stages = conv_stem_stages(patch_size)
        self.grid = (image_size // patch_size, image_size // patch_size)
        layers: list[nn.Module] = []
        c_in = 3
        for i in range(stages):
            c_out = min(width * 2**i, dim)
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=False), nn.GroupNorm(1, c_out), nn.GELU()]
            c_in = c_out
        layers.append(nn.Conv2d(c_in, dim, 1))
        self.stem = nn.Sequential(*layers)
        self.pos_embed = nn.Parameter(torch.randn(1, self.grid[0] * self.grid[1], dim) * 0.02)
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.stem(x).flatten(2).transpose(1, 2) + self.pos_embed)


def spatial_soft_argmax(maps: Tensor, temperature: Tensor | float = 1.0) -> Tensor:
    """Expected (x, y) of each map under its spatial softmax (Levine et al. 2016): [B, K, H, W] -> [B, K, 2].

    Coordinates are in [-1, 1]: x = -1 is the centre of the left pixel column, +1 of the right one
    (y likewise, top to bottom). A map with one dominant peak returns the peak's position."""
    b, k, h, w = maps.shape
    prob = torch.softmax(maps.flatten(2).float() / temperature, dim=-1).view(b, k, h, w)
    xs = torch.linspace(-1.0, 1.0, w, device=maps.device)
    ys = torch.linspace(-1.0, 1.0, h, device=maps.device)
    x = (prob.sum(2) * xs).sum(-1)  # [B, K]: marginal over rows, expectation over columns
    y = (prob.sum(3) * ys).sum(-1)
    return torch.stack([x, y], dim=-1).to(maps.dtype)


class KeypointEncoder(nn.Module):
    """A small convolutional stem kept at ``map_size`` × ``map_size`` that ends in spatial soft-argmax
    keypoints (Levine et al. 2016; robomimic's ``SpatialSoftmax``): [B, 3, H, W] -> [B, K, 2] in [-1, 1].

    Why: a few-pixel object (reach-v3's goal is ≈ 9 px in the top view at 96 px) changes 2 of 36 patch
    tokens, and the action decoder's nearly uniform cross-attention over ~100 context tokens averages it
    away; a keypoint's coordinate is a single number that moves with the object.
    One stride-``image_size // map_size`` convolution, then ``depth - 1`` 3×3 convolutions at the map's
    resolution (ReLU between), a 1×1 projection to K maps and a learned softmax temperature."""

    def __init__(self, image_size: int, map_size: int, channels: int, keypoints: int, depth: int = 3) -> None:
        super().__init__()
        if map_size < 1 or image_size % map_size:
            raise ValueError(f"keypoint_map {map_size} must divide image_size {image_size}")
        if depth < 1 or channels < 1 or keypoints < 1:
            raise ValueError("the keypoint stem needs depth, channels and keypoints ≥ 1")
        stride = image_size // map_size
        layers: list[nn.Module] = [nn.Conv2d(3, channels, 2 * stride + 1, stride=stride, padding=stride), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU()]
        layers.append(nn.Conv2d(channels, keypoints, 1))
        self.net = nn.Sequential(*layers)
        self.log_temperature = nn.Parameter(torch.zeros(1))  # shape (1,): checkpoints store no 0-d tensors

    def forward(self, x: Tensor) -> Tensor:
        return spatial_soft_argmax(self.net(x), self.log_temperature.exp())


class ViTVisionEncoder(nn.Module):
    """DINOv2-style ViT with registers; returns the normed patch tokens (``x_norm_patchtokens``)."""

    def __init__(
        self, image_size: int, patch_size: int, dim: int, depth: int, num_heads: int, num_register_tokens: int = 4,
        pos_grid: int | None = None, mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.grid = (image_size // patch_size, image_size // patch_size)
        self.pos_grid = pos_grid or self.grid[0]
        self.num_register_tokens = num_register_tokens
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + self.pos_grid**2, dim) * 0.02)
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, dim)) if num_register_tokens else None
        self.mask_token = nn.Parameter(torch.zeros(1, dim), requires_grad=False)
        self.blocks = nn.ModuleList([Block(dim, num_heads, mlp_ratio, init_values=1e-5) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def _pos(self, rows: int, cols: int) -> Tensor:
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        if (rows, cols) == (self.pos_grid, self.pos_grid):
            return self.pos_embed
        g = self.pos_grid
        grid = patch_pos.reshape(1, g, g, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid.float(), size=(rows, cols), mode="bicubic", antialias=True, align_corners=False)
        return torch.cat([cls_pos, grid.to(patch_pos.dtype).permute(0, 2, 3, 1).reshape(1, rows * cols, -1)], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        tokens = self.patch_embed.proj(x)
        rows, cols = tokens.shape[-2:]
        tokens = tokens.flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1) + self._pos(rows, cols)
        if self.register_tokens is not None:
            tokens = torch.cat([tokens[:, :1], self.register_tokens.expand(b, -1, -1), tokens[:, 1:]], dim=1)
        for blk in self.blocks:
            tokens = blk(tokens)
        return self.norm(tokens)[:, 1 + self.num_register_tokens :]


class ByteTokenizer:
    """UTF-8 bytes as token ids (0..255) plus pad/bos/eos; no files, no training, deterministic."""

    pad_id, bos_id, eos_id = 256, 257, 258
    vocab_size = 259

    def encode(self, text: str) -> list[int]:
        return [self.bos_id, *text.encode("utf-8"), self.eos_id]


class TextEncoder(nn.Module):
    """Instruction -> hidden states [B, L, H] and a padding mask, from a causal LM."""

    def __init__(
        self, max_tokens: int, path: str = "", hidden: int = 128, layers: int = 2, heads: int = 4, kv_heads: int = 2,
        intermediate: int = 256, vocab_size: int | None = None, head_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.max_tokens = max_tokens
        self.hf_tokenizer = None
        if path:
            folder = Path(path)
            if not folder.is_dir():
                raise FileNotFoundError(f"text encoder folder {path!r} does not exist (expected a local transformers checkpoint)")
            from transformers import AutoModel, AutoTokenizer

            self.hf_tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            self.lm = AutoModel.from_pretrained(str(folder), local_files_only=True)
            self.pad_id = self.hf_tokenizer.pad_token_id if self.hf_tokenizer.pad_token_id is not None else 0
        else:
            from transformers import Qwen3Config, Qwen3Model

            self.byte_tokenizer = ByteTokenizer()
            config = Qwen3Config(
                vocab_size=vocab_size or ByteTokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim or hidden // heads,
                intermediate_size=intermediate, max_position_embeddings=max(max_tokens, 32), tie_word_embeddings=True,
                pad_token_id=ByteTokenizer.pad_id if (vocab_size or ByteTokenizer.vocab_size) > ByteTokenizer.pad_id else None,
            )
            self.lm = Qwen3Model(config)
            self.pad_id = ByteTokenizer.pad_id
        self.hidden_size = int(self.lm.config.hidden_size)

    def tokenize(self, texts: list[str], device: torch.device | None = None) -> tuple[Tensor, Tensor]:
        """(input_ids [B, L], attention_mask [B, L]); raises if an instruction exceeds ``max_tokens``."""
        if isinstance(texts, str):
            raise TypeError("instructions must be a list of strings (one per batch element), got a single str")
        seqs: list[list[int]] = []
        for text in texts:
            if self.hf_tokenizer is not None:
                ids = list(self.hf_tokenizer(text, add_special_tokens=True)["input_ids"])
            else:
                ids = self.byte_tokenizer.encode(text)
            if len(ids) > self.max_tokens:
                raise ValueError(
                    f"instruction has {len(ids)} tokens, more than the text encoder's limit of {self.max_tokens} "
                    f"(model.max_text_tokens): {text[:60]!r}…"
                )
            if not ids:
                raise ValueError("empty instruction: the text encoder needs at least one token")
            seqs.append(ids)
        length = max(len(s) for s in seqs)
        ids_t = torch.full((len(seqs), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), length), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids_t[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        return ids_t.to(device), mask.to(device)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        if input_ids.shape[1] > self.max_tokens:
            raise ValueError(f"{input_ids.shape[1]} text tokens exceed the encoder's limit of {self.max_tokens}")
        return self.lm(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
