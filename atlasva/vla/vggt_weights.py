"""Load facebookresearch/vggt weights into AtlasVLA by key mapping.

VGGT's checkpoint (``model.safetensors`` or ``model.pt``) names the aggregator's tensors
``aggregator.{camera_token, register_token, frame_blocks.N.*, global_blocks.N.*, patch_embed.*}``
and its heads ``camera_head.* depth_head.* point_head.* track_head.*``. The mapping:

=====================================  ==========================================
VGGT key                               AtlasVLA key
=====================================  ==========================================
``aggregator.camera_token``            ``aggregator.camera_token``
``aggregator.register_token``          ``aggregator.register_token``
``aggregator.frame_blocks.N.*``        ``aggregator.frame_blocks.N.*``
``aggregator.global_blocks.N.*``       ``aggregator.global_blocks.N.*``
``aggregator.patch_embed.*`` (DINOv2)  ``vision.*`` when ``vision="vit"`` (else declared skipped)
``{camera,depth,point,track}_head.*``  declared skipped (AtlasVLA predicts actions)
=====================================  ==========================================

Any other key, any model tensor left without a value, or any shape mismatch is an error naming it.
The position embedding is loaded as stored (37×37 for 518 px) and interpolated at run time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from atlasva.vla.model import AtlasVLA

VGGT_HEAD_PREFIXES = ("camera_head.", "depth_head.", "point_head.", "track_head.")
# buffers VGGT registers as non-persistent; tolerated if a re-saved checkpoint carries them
VGGT_IGNORED_KEYS = ("aggregator._resnet_mean", "aggregator._resnet_std")


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)  # AtlasVLA keys that received a tensor
    skipped: list[str] = field(default_factory=list)  # checkpoint keys dropped by declaration


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """safetensors (preferred) or a plain PyTorch state dict (``weights_only=True``: never unpickles code)."""
    path = Path(path)
    if path.is_dir():
        for name in ("model.safetensors", "model.pt"):
            if (path / name).exists():
                path = path / name
                break
        else:
            raise FileNotFoundError(f"{path} holds neither model.safetensors nor model.pt")
    if not path.exists():
        raise FileNotFoundError(f"VGGT checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    return state


def map_vggt_keys(state: dict[str, Tensor], vision_is_vit: bool) -> tuple[dict[str, Tensor], list[str], list[str]]:
    """(mapped tensors, skipped keys, unexpected keys)."""
    mapped: dict[str, Tensor] = {}
    skipped: list[str] = []
    unexpected: list[str] = []
    for key, value in state.items():
        if key.startswith(VGGT_HEAD_PREFIXES) or key in VGGT_IGNORED_KEYS:
            skipped.append(key)
        elif key.startswith("aggregator.patch_embed."):
            if vision_is_vit:
                mapped["vision." + key[len("aggregator.patch_embed.") :]] = value
            else:
                skipped.append(key)
        elif key in ("aggregator.camera_token", "aggregator.register_token") or key.startswith(
            ("aggregator.frame_blocks.", "aggregator.global_blocks.")
        ):
            mapped[key] = value
        else:
            unexpected.append(key)
    return mapped, skipped, unexpected


def load_vggt_weights(model: AtlasVLA, source: str | Path | dict[str, Tensor]) -> LoadReport:
    """Copy VGGT's aggregator (and, for a ViT vision encoder, its DINOv2 patch embed) into ``model``."""
    state = read_checkpoint(source) if not isinstance(source, dict) else source
    vit = model.geometry.vision == "vit"
    mapped, skipped, unexpected = map_vggt_keys(state, vit)
    if unexpected:
        raise ValueError(f"VGGT checkpoint has keys AtlasVLA does not know: {sorted(unexpected)[:8]}")
    own = model.state_dict()
    extra = sorted(k for k in mapped if k not in own)
    if extra:
        raise ValueError(
            f"VGGT checkpoint does not fit this geometry (depth {model.geometry.depth}, "
            f"vision_depth {model.geometry.vision_depth}): no place for {extra[:8]}"
        )
    wanted = [k for k in own if k.startswith("aggregator.") or (vit and k.startswith("vision."))]
    missing = sorted(k for k in wanted if k not in mapped)
    if missing:
        raise ValueError(f"VGGT checkpoint lacks tensors the model needs: {missing[:8]}")
    for k, v in mapped.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ValueError(
                f"VGGT tensor for {k!r} has shape {tuple(v.shape)}, the model (geometry dim={model.geometry.dim}, "
                f"heads={model.geometry.heads}) expects {tuple(own[k].shape)}"
            )
    with torch.no_grad():
        for k, v in mapped.items():
            own[k].copy_(v.to(own[k].dtype))
    return LoadReport(loaded=sorted(mapped), skipped=sorted(skipped))


def load_vision_weights(model: AtlasVLA, source: str | Path | dict[str, Tensor]) -> LoadReport:
    """Load a pretrained DINOv2-style ViT (``cls_token, pos_embed, register_tokens, mask_token,
    patch_embed.proj.*, blocks.N.*, norm.*`` — DINOv2's own names, optionally under a ``backbone.`` /
    ``model.`` / ``aggregator.patch_embed.`` prefix) into ``model.vision`` (``vision="vit"``)."""
    if model.geometry.vision != "vit":
        raise ValueError("a pretrained ViT needs model.vision='vit' (the 'patch' encoder has no ViT to load into)")
    state = read_checkpoint(source) if not isinstance(source, dict) else source
    prefixes = ("aggregator.patch_embed.", "backbone.", "model.", "encoder.")
    stripped: dict[str, Tensor] = {}
    for key, value in state.items():
        for p in prefixes:
            if key.startswith(p):
                key = key[len(p):]
                break
        stripped[key] = value
    own = model.vision.state_dict()
    unexpected = sorted(k for k in stripped if k not in own)
    missing = sorted(k for k in own if k not in stripped)
    if unexpected or missing:
        raise ValueError(
            f"ViT checkpoint does not fit the vision encoder (vision_depth {model.geometry.vision_depth}, "
            f"vision_dim {model.geometry.vision_dim}): unexpected {unexpected[:6]}, missing {missing[:6]}"
        )
    for k, v in stripped.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ValueError(f"ViT tensor {k!r} has shape {tuple(v.shape)}, the encoder expects {tuple(own[k].shape)}")
    model.vision.load_state_dict(stripped, strict=True)
    return LoadReport(loaded=sorted("vision." + k for k in stripped))
