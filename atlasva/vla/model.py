"""AtlasVLA: a VGGT-style vision-language-action policy with chunked actions.

::

    image [B,3,H,W] (or [B,S,3,H,W]) in [0,1] ─► ImageNet norm ─► vision encoder (patch | conv | ViT) ─► adapter ─┐
                                                 └─► keypoint stem (optional): K soft-argmax (x, y) per view ──┐ │
    instruction ─► causal-LM text encoder (tiny Qwen3 | local checkpoint) ─► adapter ──────────────────────┤
                                  cross-attention fusion (vision attends to language) ◄──────────────────┘
                                  ─► VGGT aggregator (frame / global alternation, camera + registers)
                                  ─► projector (2C -> D)  ┐
    proprio state ─► linear ───────────────────────────────┤ context
    language tokens ─► linear ─────────────────────────────┘
    keypoints ⊕ proprio state ─► MLP ─► query offset [D] ──────────────────────────────────────────┘ (added to every query)
    learnable action queries [chunk, D] ─► parallel decoder (bidirectional self-attn + cross-attn to context)
      ─► head: regression trained with L1 (OpenVLA-OFT style), MSE or Huber
         or flow matching velocity (π0 style, Euler sampling)
    ─► actions [B, chunk, action_dim] (in the normalised action space; see ``atlasva.vla.data.Normalizer``)
    optional auxiliary query through the same decoder ─► aux head ─► object / goal positions [B, aux_dim]

The keypoint path exists because a few-pixel object barely moves a ~100-token context that the decoder's
cross-attention averages nearly uniformly (benchmarks/README.md, VLA: the tiny model without it sat on the
mean goal); a keypoint coordinate that reaches the queries directly is one number that moves with the object.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from atlasva.vla.aggregator import Aggregator
from atlasva.vla.dit import DiTActionHead
from atlasva.vla.encoders import (
    ConvStemVisionEncoder,
    KeypointEncoder,
    PatchVisionEncoder,
    TextEncoder,
    ViTVisionEncoder,
    conv_stem_stages,
)
from atlasva.vla.layers import CrossBlock, Mlp, timestep_embedding

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Geometry:
    """Every shape-determining setting of an AtlasVLA (stored with each checkpoint)."""

    image_size: int = 224
    patch_size: int = 16
    vision: str = "patch"  # patch | conv | vit
    vision_dim: int = 128
    vision_depth: int = 0
    vision_heads: int = 4
    vision_registers: int = 4
    vision_pos_grid: int = 0  # ViT's stored position grid (0 = image_size // patch_size; 37 for VGGT/DINOv2 518 px)
    dim: int = 128  # aggregator width
    depth: int = 2  # frame/global block pairs
    heads: int = 4
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    qk_norm: bool = True
    rope_freq: float = 100.0
    init_values: float = 0.01
    text_path: str = ""  # local transformers checkpoint; "" = tiny Qwen3 from config + byte tokenizer
    text_hidden: int = 128
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate: int = 256
    text_head_dim: int = 0  # 0 = text_hidden // text_heads
    text_vocab_size: int = 0  # 0 = the byte tokenizer's 259 ids
    max_text_tokens: int = 64
    fusion_layers: int = 1
    decoder_dim: int = 128
    decoder_layers: int = 2
    decoder_heads: int = 4
    chunk: int = 8
    action_dim: int = 7
    state_dim: int = 0  # 0 = no proprioception
    head: str = "l1"  # regression trained with l1 | mse | huber (same weights), or flow | dit (flow matching)
    flow_steps: int = 10
    dit_layers: int = 4  # blocks of the dit head (cross-attention to the context in every other block)
    keypoints: int = 0  # soft-argmax keypoints per view (0 = no keypoint path)
    keypoint_map: int = 48  # the keypoint stem's feature-map side (divides image_size)
    keypoint_channels: int = 16
    views: int = 1  # camera views per query; the keypoint path reads exactly this many
    aux_dim: int = 0  # auxiliary object/goal-position target (0 = no auxiliary head)
    # what the auxiliary head reads: "decoder" (one extra query through the action decoder) or "keypoints"
    # (the keypoint coordinates alone, so the position loss trains the stem directly and cannot fall back
    # on the hand position, which predicts the goal late in a demo but not on its first frame)
    aux_source: str = "decoder"
    # the frame of the auxiliary targets: "world" (positions as recorded) or "hand" (each position minus the
    # hand's, state[:3]). The wrist camera sees the goal relative to the hand, so from the keypoints alone a
    # world-frame height is ambiguous and regresses to the mean; the relative position is what they show,
    # and what the action needs (see aux_frame_offset)
    aux_frame: str = "world"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SIZES: dict[str, Geometry] = {
    "tiny": Geometry(),
    "base": Geometry(
        patch_size=14, vision="vit", vision_dim=384, vision_depth=6, vision_heads=6, dim=384, depth=6, heads=6,
        text_hidden=512, text_layers=4, text_heads=8, text_kv_heads=4, text_intermediate=1536, decoder_dim=384,
        decoder_layers=4, decoder_heads=6, fusion_layers=2,
    ),
    # VGGT-1B's aggregator (DINOv2 ViT-L/14-reg patch embed + 24 frame/global pairs at 1024) and
    # Qwen3-0.6B's geometry for the text encoder (give text_path for the real weights).
    "vggt-1b": Geometry(
        patch_size=14, vision="vit", vision_dim=1024, vision_depth=24, vision_heads=16, vision_pos_grid=37,
        dim=1024, depth=24, heads=16, text_hidden=1024, text_layers=28, text_heads=16, text_kv_heads=8,
        text_intermediate=3072, text_head_dim=128, text_vocab_size=151936, max_text_tokens=77, fusion_layers=2, decoder_dim=768, decoder_layers=4,
        decoder_heads=12,
    ),
}


HEADS = ("l1", "mse", "huber", "flow", "dit")
FLOW_HEADS = ("flow", "dit")  # velocity fields sampled by Euler integration
AUX_SOURCES = ("decoder", "keypoints")
AUX_FRAMES = ("world", "hand")


class Encoding(NamedTuple):
    """What the action decoder reads: context tokens [B, N, D], their padding mask [B, N] (True = pad)
    and the per-sample offset added to every query [B, D] (keypoints ⊕ state; None without keypoints), and
    the keypoint coordinates themselves [B, S·K·2] (None without keypoints)."""

    context: Tensor
    pad: Tensor
    query: Tensor | None = None
    points: Tensor | None = None


def flow_times(u: Tensor) -> Tensor:
    """Flow-matching training times from uniform draws ``u``, weighted towards the noise end as π0 does.

    Here t = 1 is pure noise (x_t = t·noise + (1 − t)·action). π0 draws its data-side time
    τ = s·(1 − Beta(1.5, 1)) with s = 0.999 (τ = 0 noise); in our convention t = 1 − τ = 0.001 + 0.999·B with
    B ~ Beta(1.5, 1) = u^(1/1.5) (inverse of its CDF b^1.5): density ∝ √t, mean 0.6, P(t > 0.5) = 1 − 0.5^1.5 ≈ 0.65."""
    return 0.001 + 0.999 * u.pow(1.0 / 1.5)


def make_geometry(size: str = "tiny", **overrides: Any) -> Geometry:
    """The preset ``size`` with the given fields replaced (``None`` values are ignored)."""
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; expected one of {sorted(SIZES)}")
    valid = {f.name for f in dataclasses.fields(Geometry)}
    bad = sorted(k for k in overrides if k not in valid)
    if bad:
        raise ValueError(f"unknown geometry fields {bad}; valid: {sorted(valid)}")
    geom = dataclasses.replace(SIZES[size], **{k: v for k, v in overrides.items() if v is not None})
    _validate(geom)
    return geom


def _validate(g: Geometry) -> None:
    if g.image_size % g.patch_size:
        raise ValueError(f"image_size {g.image_size} must be a multiple of patch_size {g.patch_size}")
    if g.vision not in ("patch", "conv", "vit"):
        raise ValueError(f"vision must be 'patch', 'conv' or 'vit', got {g.vision!r}")
    if g.vision == "conv":
        conv_stem_stages(g.patch_size)
    if g.head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {g.head!r}")
    if g.head == "dit" and g.dit_layers < 2:
        raise ValueError(f"dit_layers must be ≥ 2 (cross-attention every other block), got {g.dit_layers}")
    if g.keypoints < 0 or g.aux_dim < 0 or g.views < 1:
        raise ValueError(f"keypoints and aux_dim must be ≥ 0 and views ≥ 1, got {g.keypoints}, {g.aux_dim}, {g.views}")
    if g.aux_source not in AUX_SOURCES:
        raise ValueError(f"unknown aux_source {g.aux_source!r}; expected one of {list(AUX_SOURCES)}")
    if g.aux_frame not in AUX_FRAMES:
        raise ValueError(f"unknown aux_frame {g.aux_frame!r}; expected one of {list(AUX_FRAMES)}")
    if g.aux_frame == "hand" and g.aux_dim and (g.state_dim < 3 or g.aux_dim % 3):
        raise ValueError(f"aux_frame='hand' subtracts the hand position (state[:3]) from each xyz target: it needs "
                         f"state_dim ≥ 3 and aux_dim a multiple of 3, got state_dim={g.state_dim}, aux_dim={g.aux_dim}")
    if g.aux_source == "keypoints" and g.aux_dim and not g.keypoints:
        raise ValueError("aux_source='keypoints' reads the keypoint path: set keypoints > 0 (or aux_source='decoder')")
    if g.keypoints and (g.keypoint_map < 1 or g.image_size % g.keypoint_map):
        raise ValueError(f"keypoint_map {g.keypoint_map} must divide image_size {g.image_size}")
    if (g.dim // g.heads) % 4:
        raise ValueError(f"dim/heads = {g.dim // g.heads} must be divisible by 4 for 2-D RoPE")
    if g.chunk < 1 or g.action_dim < 1:
        raise ValueError("chunk and action_dim must be ≥ 1")


class AtlasVLA(nn.Module):
    def __init__(self, geometry: Geometry) -> None:
        super().__init__()
        _validate(geometry)
        g = self.geometry = geometry
        self.grid = (g.image_size // g.patch_size, g.image_size // g.patch_size)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if g.vision == "patch":
            self.vision: nn.Module = PatchVisionEncoder(g.image_size, g.patch_size, g.vision_dim)
        elif g.vision == "conv":
            self.vision = ConvStemVisionEncoder(g.image_size, g.patch_size, g.vision_dim)
        else:
            self.vision = ViTVisionEncoder(
                g.image_size, g.patch_size, g.vision_dim, g.vision_depth, g.vision_heads, g.vision_registers,
                pos_grid=g.vision_pos_grid or None,
            )
        self.vision_adapter = nn.Sequential(nn.Linear(g.vision_dim, g.dim), nn.GELU(), nn.Linear(g.dim, g.dim))
        self.text = TextEncoder(
            g.max_text_tokens, g.text_path, g.text_hidden, g.text_layers, g.text_heads, g.text_kv_heads,
            g.text_intermediate, vocab_size=g.text_vocab_size or None, head_dim=g.text_head_dim or None,
        )
        self.text_adapter = nn.Sequential(nn.Linear(self.text.hidden_size, g.dim), nn.GELU(), nn.Linear(g.dim, g.dim))
        self.fusion = nn.ModuleList([CrossBlock(g.dim, g.heads) for _ in range(g.fusion_layers)])
        self.aggregator = Aggregator(
            g.dim, g.depth, g.heads, g.mlp_ratio, g.num_register_tokens, g.qk_norm, g.rope_freq, g.init_values
        )
        self.projector = nn.Sequential(
            nn.LayerNorm(2 * g.dim), nn.Linear(2 * g.dim, g.decoder_dim), nn.GELU(), nn.Linear(g.decoder_dim, g.decoder_dim)
        )
        self.text_to_decoder = nn.Linear(g.dim, g.decoder_dim)
        self.state_proj = nn.Linear(g.state_dim, g.decoder_dim) if g.state_dim else None
        self.action_queries = nn.Parameter(torch.randn(g.chunk, g.decoder_dim) * 0.02)
        self.decoder = nn.ModuleList(
            [CrossBlock(g.decoder_dim, g.decoder_heads, self_attn=True) for _ in range(g.decoder_layers)]
        )
        self.out_norm = nn.LayerNorm(g.decoder_dim)
        if g.head not in FLOW_HEADS:
            self.action_head: nn.Module = nn.Sequential(Mlp(g.decoder_dim, g.decoder_dim), nn.GELU(), nn.Linear(g.decoder_dim, g.action_dim))
        elif g.head == "flow":
            self.action_in = nn.Linear(g.action_dim, g.decoder_dim)
            self.time_mlp = nn.Sequential(nn.Linear(g.decoder_dim, g.decoder_dim), nn.SiLU(), nn.Linear(g.decoder_dim, g.decoder_dim))
            self.action_head = nn.Linear(g.decoder_dim, g.action_dim)
        # created last, so a model without them initialises exactly as before they existed
        self.keypoint_encoder: KeypointEncoder | None = None
        if g.keypoints:
            self.keypoint_encoder = KeypointEncoder(g.image_size, g.keypoint_map, g.keypoint_channels, g.keypoints)
            self.keypoint_proj = nn.Sequential(
                nn.Linear(g.views * g.keypoints * 2 + g.state_dim, g.decoder_dim), nn.GELU(),
                nn.Linear(g.decoder_dim, g.decoder_dim),
            )
        if g.aux_dim:
            self.aux_query = nn.Parameter(torch.randn(1, g.decoder_dim) * 0.02)
            width = g.views * g.keypoints * 2 if g.aux_source == "keypoints" else g.decoder_dim
            self.aux_head = nn.Sequential(nn.Linear(width, g.decoder_dim), nn.GELU(), nn.Linear(g.decoder_dim, g.aux_dim))
        self.dit: DiTActionHead | None = None
        if g.head == "dit":  # the action expert reads the fused context itself (the decoder serves the aux query)
            self.dit = DiTActionHead(g.action_dim, g.chunk, g.decoder_dim, g.dit_layers, g.decoder_heads, g.mlp_ratio)

    # ------------------------------------------------------------------ freezing
    def set_frozen(self, vision: bool = False, text: bool = False, aggregator: bool = False) -> None:
        for module, flag in ((self.vision, vision), (self.text, text), (self.aggregator, aggregator)):
            for p in module.parameters():
                p.requires_grad_(not flag)
        if isinstance(self.vision, ViTVisionEncoder):
            self.vision.mask_token.requires_grad_(False)

    # ------------------------------------------------------------------ inputs
    def check_images(self, images: Tensor) -> Tensor:
        """Validate and convert to float [B, S, 3, H, W] in [0, 1]."""
        g = self.geometry
        if not isinstance(images, Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.dim() == 4:
            images = images[:, None]
        if images.dim() != 5:
            raise ValueError(f"images must be [B,3,H,W] or [B,S,3,H,W], got shape {tuple(images.shape)}")
        if images.shape[2] != 3:
            hint = " (channels-last? permute to [B,3,H,W])" if images.shape[-1] == 3 else ""
            raise ValueError(f"images must have 3 channels at dim -3 ([B,3,H,W] RGB), got shape {tuple(images.shape)}{hint}")
        if tuple(images.shape[-2:]) != (g.image_size, g.image_size):
            raise ValueError(
                f"images must be {g.image_size}x{g.image_size} (model.image_size), got {tuple(images.shape[-2:])}"
            )
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        elif not images.is_floating_point():
            raise TypeError(f"images must be uint8 or float in [0,1], got {images.dtype}")
        elif images.numel() and (images.min() < -1e-3 or images.max() > 1.0 + 1e-3):
            raise ValueError("float images must lie in [0, 1] (the model applies the ImageNet normalisation itself)")
        return images

    # ------------------------------------------------------------------ encoding
    def _pixels(self, images: Tensor) -> tuple[Tensor, int, int]:
        """ImageNet-normalised views [B*S, 3, H, W], B and S."""
        g = self.geometry
        x = self.check_images(images)
        b, s = x.shape[:2]
        if self.keypoint_encoder is not None and s != g.views:
            raise ValueError(f"this model's keypoint path reads {g.views} view(s) per query (model.views), got {s}")
        x = x.reshape(b * s, 3, g.image_size, g.image_size)
        return (x - self.pixel_mean.to(x.dtype)) / self.pixel_std.to(x.dtype), b, s

    def encode(
        self, images: Tensor, input_ids: Tensor, attention_mask: Tensor, state: Tensor | None = None
    ) -> Encoding:
        """Everything the action decoder reads (:class:`Encoding`)."""
        g = self.geometry
        x, b, s = self._pixels(images)
        vis = self.vision_adapter(self.vision(x))  # [B*S, P, C]
        # batches repeat few instructions: encode each distinct one once (exact; saves most text compute)
        key = torch.cat([input_ids, attention_mask], dim=1)
        uniq, inverse = torch.unique(key, dim=0, return_inverse=True)
        length = input_ids.shape[1]
        text_h = self.text_adapter(self.text(uniq[:, :length], uniq[:, length:]))[inverse]  # [B, L, C]
        text_pad = attention_mask == 0
        text_rep = text_h.repeat_interleave(s, dim=0)
        pad_rep = text_pad.repeat_interleave(s, dim=0)
        for blk in self.fusion:
            vis = blk(vis, text_rep, pad_rep)
        layers = self.aggregator(vis.reshape(b, s, vis.shape[1], g.dim), self.grid)
        agg = self.projector(layers[-1]).reshape(b, -1, g.decoder_dim)  # [B, S*T, D]
        parts = [agg, self.text_to_decoder(text_h)]
        pads = [torch.zeros(agg.shape[:2], dtype=torch.bool, device=agg.device), text_pad]
        if self.state_proj is not None:
            if state is None:
                raise ValueError(f"this model takes proprioception: pass state [B, {g.state_dim}]")
            if state.dim() != 2 or state.shape != (b, g.state_dim):
                raise ValueError(f"state must be [B, {g.state_dim}] = [{b}, {g.state_dim}], got {tuple(state.shape)}")
            state = state.to(agg.dtype)
            parts.append(self.state_proj(state)[:, None])
            pads.append(torch.zeros(b, 1, dtype=torch.bool, device=agg.device))
        query = points = None
        if self.keypoint_encoder is not None:
            points = self.keypoint_encoder(x).reshape(b, s * g.keypoints * 2)  # [B, S*K*2], (x, y) in [-1, 1]
            query = self.keypoint_proj(torch.cat([points, state], dim=1) if g.state_dim else points)  # [B, D]
        return Encoding(torch.cat(parts, dim=1), torch.cat(pads, dim=1), query, points)

    def keypoints(self, images: Tensor) -> Tensor:
        """Soft-argmax keypoints [B, S, K, 2] ((x, y) in [-1, 1]) of a model with a keypoint path."""
        if self.keypoint_encoder is None:
            raise ValueError("this model has no keypoint path (model.keypoints=0)")
        x, b, s = self._pixels(images)
        return self.keypoint_encoder(x).reshape(b, s, self.geometry.keypoints, 2)

    def _decode(self, enc: Encoding, extra: Tensor | None = None, queries: Tensor | None = None) -> Tensor:
        """The decoder's outputs for ``queries`` [Q, D] (default: the action queries), each offset by
        ``enc.query`` and ``extra`` ([B, Q, D])."""
        q = (self.action_queries if queries is None else queries)[None].expand(enc.context.shape[0], -1, -1)
        if enc.query is not None:
            q = q + enc.query[:, None]
        if extra is not None:
            q = q + extra
        for blk in self.decoder:
            q = blk(q, enc.context, enc.pad)
        return self.out_norm(q)

    def velocity(self, enc: Encoding, x_t: Tensor, t: Tensor) -> Tensor:
        """Flow-matching velocity field v(x_t, t | observation); t in [0, 1] with t=1 pure noise."""
        if self.dit is not None:
            return self.dit(x_t, t, enc.context, enc.pad, enc.query)
        temb = self.time_mlp(timestep_embedding(t, self.geometry.decoder_dim))[:, None]
        return self.action_head(self._decode(enc, self.action_in(x_t) + temb))

    def aux(self, enc: Encoding) -> Tensor:
        """The auxiliary head's object/goal positions [B, aux_dim]. ``aux_source="decoder"``: one extra query
        through the action decoder, so the position loss trains the same attention the actions read through;
        ``"keypoints"``: the keypoint coordinates alone (no hand state: along a reach demo the hand converges on
        the goal, a shortcut that leaves the first frame at the mean goal), so the loss reaches the stem
        without passing through attention over ~100 context tokens."""
        if not self.geometry.aux_dim:
            raise ValueError("this model has no auxiliary head (model.aux_dim=0)")
        if self.geometry.aux_source == "keypoints":
            return self.aux_head(enc.points)
        return self.aux_head(self._decode(enc, queries=self.aux_query)[:, 0])

    # ------------------------------------------------------------------ inference
    def forward(
        self, images: Tensor, input_ids: Tensor, attention_mask: Tensor, state: Tensor | None = None,
        generator: torch.Generator | None = None, noise: Tensor | None = None,
    ) -> Tensor:
        """Predicted action chunk [B, chunk, action_dim] (normalised action space)."""
        enc = self.encode(images, input_ids, attention_mask, state)
        if self.geometry.head not in FLOW_HEADS:
            return self.action_head(self._decode(enc))
        return self.sample_flow(enc, generator=generator, noise=noise)

    def sample_flow(
        self, enc: Encoding, generator: torch.Generator | None = None, noise: Tensor | None = None,
        steps: int | None = None,
    ) -> Tensor:
        """Euler integration of the velocity field from noise (t = 1) to an action chunk (t = 0)."""
        g = self.geometry
        context = enc.context
        shape = (context.shape[0], g.chunk, g.action_dim)
        if noise is None:
            noise = torch.randn(shape, generator=generator, device=context.device if generator is None else generator.device)
            noise = noise.to(context.device, context.dtype)
        elif tuple(noise.shape) != shape:
            raise ValueError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
        n = steps or g.flow_steps
        x = noise
        dt = 1.0 / n
        for i in range(n):
            t = torch.full((shape[0],), 1.0 - i * dt, device=context.device)
            x = x - dt * self.velocity(enc, x, t)
        return x

    @torch.no_grad()
    def predict(
        self, images: Tensor, instructions: list[str], state: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        ids, mask = self.text.tokenize(instructions, device=self.action_queries.device)
        if ids.shape[0] != images.shape[0]:
            raise ValueError(f"{ids.shape[0]} instructions for a batch of {images.shape[0]} images")
        return self(images, ids, mask, state, generator=generator)

    # ------------------------------------------------------------------ training
    def loss_terms(
        self, images: Tensor, input_ids: Tensor, attention_mask: Tensor, actions: Tensor, state: Tensor | None = None,
        generator: torch.Generator | None = None, action_mask: Tensor | None = None, aux_target: Tensor | None = None,
        aux_weight: float = 1.0,
    ) -> dict[str, Tensor]:
        """``{"loss", "action"}`` on a target chunk [B, chunk, action_dim], plus ``"aux"`` (MSE) when ``aux_target``
        [B, aux_dim] is given; ``loss = action + aux_weight · aux``. The action term is the head's: L1, MSE or
        Huber (δ = 1) of the regression, or the flow-matching MSE on the velocity."""
        g = self.geometry
        if actions.dim() != 3 or tuple(actions.shape[1:]) != (g.chunk, g.action_dim):
            raise ValueError(f"target actions must be [B, {g.chunk}, {g.action_dim}], got {tuple(actions.shape)}")
        if aux_target is not None and (not g.aux_dim or tuple(aux_target.shape) != (actions.shape[0], g.aux_dim)):
            raise ValueError(f"aux_target must be [B, aux_dim] = [{actions.shape[0]}, {g.aux_dim}] "
                             f"(model.aux_dim), got {tuple(aux_target.shape)}")
        enc = self.encode(images, input_ids, attention_mask, state)
        if action_mask is None:
            action_mask = torch.ones(actions.shape[:2], device=actions.device)
        weight = action_mask.to(actions.dtype)[..., None].expand_as(actions)
        if g.head in FLOW_HEADS:
            b = actions.shape[0]
            dev = actions.device
            gen_dev = dev if generator is None else generator.device
            noise = torch.randn(actions.shape, generator=generator, device=gen_dev).to(dev)
            t = flow_times(torch.rand(b, generator=generator, device=gen_dev).to(dev))
            x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * actions
            err = (self.velocity(enc, x_t, t) - (noise - actions)).pow(2)
        else:
            pred = self.action_head(self._decode(enc))
            if g.head == "l1":
                err = F.l1_loss(pred, actions, reduction="none")
            elif g.head == "mse":
                err = F.mse_loss(pred, actions, reduction="none")
            else:
                err = F.huber_loss(pred, actions, reduction="none", delta=1.0)
        terms = {"action": (err * weight).sum() / weight.sum().clamp_min(1.0)}
        terms["loss"] = terms["action"]
        if aux_target is not None:
            terms["aux"] = F.mse_loss(self.aux(enc), aux_target.to(enc.context.dtype))
            terms["loss"] = terms["action"] + aux_weight * terms["aux"]
        return terms

    def loss(
        self, images: Tensor, input_ids: Tensor, attention_mask: Tensor, actions: Tensor, state: Tensor | None = None,
        generator: torch.Generator | None = None, action_mask: Tensor | None = None, aux_target: Tensor | None = None,
        aux_weight: float = 1.0,
    ) -> Tensor:
        """The training loss (see :meth:`loss_terms`)."""
        return self.loss_terms(images, input_ids, attention_mask, actions, state, generator, action_mask, aux_target,
                               aux_weight)["loss"]

    # ------------------------------------------------------------------ checkpoints
    def load_tensors(self, tensors: dict[str, Any], geometry: dict[str, Any] | None = None) -> None:
        """Load a state dict saved by this class; a checkpoint of another geometry is a clear error."""
        if geometry is not None:
            mine = self.geometry.to_dict()
            diff = {k: (geometry.get(k), v) for k, v in mine.items() if k in geometry and geometry[k] != v and k != "text_path"}
            if diff:
                lines = ", ".join(f"{k}: checkpoint {a!r} vs model {b!r}" for k, (a, b) in sorted(diff.items()))
                raise ValueError(f"checkpoint has another geometry ({lines})")
        own = self.state_dict()
        missing = sorted(set(own) - set(tensors))
        unexpected = sorted(set(tensors) - set(own))
        if missing or unexpected:
            raise ValueError(
                f"checkpoint does not match the model: missing {missing[:5]}{'…' if len(missing) > 5 else ''}, "
                f"unexpected {unexpected[:5]}{'…' if len(unexpected) > 5 else ''}"
            )
        for k, v in tensors.items():
            t = torch.as_tensor(v)
            if tuple(t.shape) != tuple(own[k].shape):
                raise ValueError(f"checkpoint tensor {k!r} has shape {tuple(t.shape)}, the model expects {tuple(own[k].shape)}")
        self.load_state_dict({k: torch.as_tensor(v) for k, v in tensors.items()}, strict=True)


def build_model(geometry: Geometry, seed: int = 0) -> AtlasVLA:
    """A freshly initialised model; the seed fixes every weight."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AtlasVLA(geometry)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
