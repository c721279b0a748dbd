"""Chat prompts → token ids + ``pixel_values`` / ``image_grid_thw`` in Qwen2-VL / Qwen2.5-VL's layout.

A *prompt* is a list of chat messages::

    [{"role": "system", "content": "You are …"},
     {"role": "user", "content": [{"type": "text", "text": "The board:"},
                                  {"type": "image", "image": np.ndarray(H, W, 3) uint8 | PIL.Image},
                                  {"type": "text", "text": "Your move?"}]}]

``content`` may also be a plain string. Images are rendered by the tokenizer's chat template as
``<|vision_start|><|image_pad|><|vision_end|>``; :class:`PolicyProcessor` then expands each
``<|image_pad|>`` to ``t·h·w / merge²`` copies (one per merged vision token) and patchifies the image.

Multi-turn agents never re-tokenise history: :meth:`PolicyProcessor.encode_prompt` encodes the chat
prefix (system + first user turn + the assistant header), generated ids are appended verbatim and
:meth:`PolicyProcessor.encode_user_turn` encodes only what follows them (end of the assistant turn,
the next user turn, the next assistant header). :class:`Encoded` carries ids and image tensors
together so the pieces concatenate.

:class:`QwenImageProcessor` is a numpy/PIL re-implementation of transformers'
``Qwen2VLImageProcessor`` (``smart_resize`` → rescale → normalise → patchify into
``(grid_t·grid_h·grid_w, C·temporal_patch·patch²)``); it needs no torchvision, reads and writes the
same ``preprocessor_config.json`` and matches the reference numerically (tested).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atlasva.formats import IMAGE_PLACEHOLDER
from atlasva.policy.tokenizer import EOS_TOKEN, IMAGE_TOKEN, VIDEO_TOKEN

Message = dict[str, Any]
Prompt = list[Message]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PREPROCESSOR_FILE = "preprocessor_config.json"


def to_uint8_rgb(image: Any) -> np.ndarray:
    """An image (np.ndarray H×W×3 / H×W, or PIL) as a contiguous uint8 H×W×3 array."""
    if isinstance(image, np.ndarray):
        arr = image
    else:
        try:
            from PIL import Image
        except ImportError as exc:  # pragma: no cover - pillow is a core dependency
            raise TypeError(f"unsupported image type {type(image).__name__}") from exc
        if not isinstance(image, Image.Image):
            raise TypeError(f"an image must be a numpy array (H, W, 3) or a PIL image, got {type(image).__name__}")
        arr = np.asarray(image.convert("RGB"))
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"an image array must be H×W×3 (or H×W×4 / H×W), got shape {arr.shape}")
    if arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.size and float(arr.max()) <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def smart_resize(
    height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 1280
) -> tuple[int, int]:
    """Qwen2-VL's resize rule: both sides multiples of ``factor``, area within [min_pixels, max_pixels]."""
    if min(height, width) <= 0:
        raise ValueError(f"image size must be positive, got {height}×{width}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"absolute aspect ratio must be smaller than 200, got {height}×{width}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


class QwenImageProcessor:
    """Qwen2-VL / Qwen2.5-VL image preprocessing in numpy (no torchvision)."""

    def __init__(
        self,
        *,
        patch_size: int = 14,
        merge_size: int = 2,
        temporal_patch_size: int = 2,
        min_pixels: int = 56 * 56,
        max_pixels: int = 28 * 28 * 1280,
        image_mean: Sequence[float] = OPENAI_CLIP_MEAN,
        image_std: Sequence[float] = OPENAI_CLIP_STD,
        rescale_factor: float = 1 / 255,
        do_resize: bool = True,
    ) -> None:
        self.patch_size = int(patch_size)
        self.merge_size = int(merge_size)
        self.temporal_patch_size = int(temporal_patch_size)
        self.min_pixels = int(min_pixels)
        self.max_pixels = int(max_pixels)
        self.image_mean = tuple(float(x) for x in image_mean)
        self.image_std = tuple(float(x) for x in image_std)
        self.rescale_factor = float(rescale_factor)
        self.do_resize = bool(do_resize)
        self._mean = np.asarray(self.image_mean, dtype=np.float32)[:, None, None]
        self._std = np.asarray(self.image_std, dtype=np.float32)[:, None, None]

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        if not self.do_resize:
            return height, width
        return smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels)

    def num_tokens(self, height: int, width: int) -> int:
        """Merged vision tokens (``<|image_pad|>`` copies) an image of this size becomes."""
        h, w = self.target_size(height, width)
        return (h // self.patch_size) * (w // self.patch_size) // self.merge_size**2

    def process_one(self, image: Any) -> tuple[np.ndarray, tuple[int, int, int]]:
        arr = to_uint8_rgb(image)
        height, width = arr.shape[:2]
        th, tw = self.target_size(height, width)
        if (th, tw) != (height, width):
            from PIL import Image

            arr = np.asarray(Image.fromarray(arr).resize((tw, th), resample=Image.Resampling.BICUBIC))
        if th % self.factor or tw % self.factor:
            raise ValueError(f"image size {th}×{tw} is not a multiple of patch·merge = {self.factor}")
        x = arr.astype(np.float32).transpose(2, 0, 1) * np.float32(self.rescale_factor)
        x = (x - self._mean) / self._std
        c, p, m, t = 3, self.patch_size, self.merge_size, self.temporal_patch_size
        gh, gw = th // p, tw // p
        x = x.reshape(c, gh // m, m, p, gw // m, m, p).transpose(1, 4, 2, 5, 0, 3, 6)
        x = np.broadcast_to(x[:, :, :, :, :, None], (*x.shape[:5], t, p, p))
        return np.ascontiguousarray(x.reshape(gh * gw, c * t * p * p), dtype=np.float32), (1, gh, gw)

    def __call__(self, images: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """``pixel_values`` (sum of patches, C·T·P·P) float32 and ``image_grid_thw`` (n, 3) int64."""
        if not images:
            raise ValueError("no images given")
        patches, grids = zip(*(self.process_one(im) for im in images))
        return torch.from_numpy(np.concatenate(patches, axis=0)), torch.tensor(grids, dtype=torch.long)

    # ---------------------------------------------------------------- HF-compatible config file
    def to_dict(self) -> dict[str, Any]:
        return {
            "image_processor_type": "Qwen2VLImageProcessor",
            "processor_class": "Qwen2_5_VLProcessor",
            "do_resize": self.do_resize,
            "do_rescale": True,
            "rescale_factor": self.rescale_factor,
            "do_normalize": True,
            "do_convert_rgb": True,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "resample": 3,
            "patch_size": self.patch_size,
            "merge_size": self.merge_size,
            "temporal_patch_size": self.temporal_patch_size,
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
            "size": {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels},
        }

    def save_pretrained(self, directory: str | Path) -> None:
        path = Path(directory) / PREPROCESSOR_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> QwenImageProcessor:
        path = Path(directory) / PREPROCESSOR_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: a Qwen-VL model folder needs its preprocessor_config.json")
        cfg = json.loads(path.read_text())
        size = cfg.get("size") or {}
        return cls(
            patch_size=cfg.get("patch_size", 14),
            merge_size=cfg.get("merge_size", 2),
            temporal_patch_size=cfg.get("temporal_patch_size", 2),
            min_pixels=cfg.get("min_pixels") or size.get("shortest_edge") or 56 * 56,
            max_pixels=cfg.get("max_pixels") or size.get("longest_edge") or 28 * 28 * 1280,
            image_mean=cfg.get("image_mean", OPENAI_CLIP_MEAN),
            image_std=cfg.get("image_std", OPENAI_CLIP_STD),
            rescale_factor=cfg.get("rescale_factor", 1 / 255),
            do_resize=cfg.get("do_resize", True),
        )


@dataclass
class Encoded:
    """Token ids with the images they reference (in order), ready to concatenate turn by turn.

    ``images`` keeps the source images (uint8 H×W×3) next to their patches: engines that preprocess
    images themselves (vLLM, verl's rollout servers) take the images, the local model the patches.
    """

    input_ids: list[int]
    pixel_values: torch.Tensor | None = None  # (patches, C·T·P·P) float32
    image_grid_thw: torch.Tensor | None = None  # (images, 3) int64
    images: list[np.ndarray] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_images(self) -> int:
        return 0 if self.image_grid_thw is None else int(self.image_grid_thw.shape[0])

    def __add__(self, other: Encoded | Sequence[int]) -> Encoded:
        if not isinstance(other, Encoded):
            return Encoded([*self.input_ids, *(int(i) for i in other)], self.pixel_values, self.image_grid_thw,
                           list(self.images))
        pv = _cat(self.pixel_values, other.pixel_values)
        grid = _cat(self.image_grid_thw, other.image_grid_thw)
        return Encoded([*self.input_ids, *other.input_ids], pv, grid, [*self.images, *other.images])


def _cat(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None:
        return b
    if b is None:
        return a
    return torch.cat([a, b], dim=0)


def content_from_obs(text: str, images: Sequence[Any] = (), placeholder: str = IMAGE_PLACEHOLDER) -> list[dict[str, Any]]:
    """An env observation (text with one ``<image>`` per image) as message content items, in order."""
    parts = text.split(placeholder)
    if len(parts) - 1 != len(images):
        raise ValueError(f"observation text has {len(parts) - 1} {placeholder!r} placeholder(s) but {len(images)} image(s)")
    items: list[dict[str, Any]] = []
    for i, part in enumerate(parts):
        if part:
            items.append({"type": "text", "text": part})
        if i < len(images):
            items.append({"type": "image", "image": images[i]})
    return items


def _is_image_item(item: dict[str, Any]) -> bool:
    return item.get("type") == "image" or "image" in item or "image_url" in item


def prompt_images(messages: Prompt) -> list[Any]:
    """The images of a prompt in the order the chat template places them."""
    out = []
    for msg in messages:
        content = msg.get("content")
        if isinstance(content, list):
            for item in content:
                if isinstance(item, dict) and _is_image_item(item):
                    if "image" not in item:
                        raise ValueError("image items need the image itself under 'image' (np.ndarray or PIL)")
                    out.append(item["image"])
    return out


def _strip_images(messages: Prompt) -> Prompt:
    """Messages for the chat template: image payloads replaced by bare ``{"type": "image"}`` markers."""
    out: Prompt = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise ValueError(f"message {i} must be a dict with 'role' and 'content', got {msg!r:.120}")
        content = msg["content"]
        if isinstance(content, str):
            out.append({"role": msg["role"], "content": content})
            continue
        if not isinstance(content, list):
            raise ValueError(f"message {i} content must be a string or a list of items, got {type(content).__name__}")
        items = []
        for item in content:
            if isinstance(item, str):
                items.append({"type": "text", "text": item})
            elif isinstance(item, dict) and _is_image_item(item):
                items.append({"type": "image"})
            elif isinstance(item, dict) and "text" in item:
                items.append({"type": "text", "text": str(item["text"])})
            else:
                raise ValueError(f"message {i}: unsupported content item {item!r:.120} (use type text or image)")
        out.append({"role": msg["role"], "content": items})
    return out


_MARK = "\x00ATLASVA_ASSISTANT_MARK\x00"


class PolicyProcessor:
    """Tokenizer (with a Qwen-VL chat template) + :class:`QwenImageProcessor`."""

    def __init__(self, tokenizer: Any, image_processor: QwenImageProcessor) -> None:
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("the tokenizer has no chat template (a Qwen-VL tokenizer_config.json carries one)")
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.image_token_id = self._token_id(IMAGE_TOKEN)
        self.video_token_id = self._token_id(VIDEO_TOKEN)
        eos = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
        self.eos_token_id: int = int(eos) if isinstance(eos, int) and eos >= 0 else int(tokenizer.eos_token_id)
        pad = tokenizer.pad_token_id
        self.pad_token_id: int = int(pad) if pad is not None else self.eos_token_id
        self.eos_text: str = tokenizer.convert_ids_to_tokens(self.eos_token_id)

    def _token_id(self, token: str) -> int:
        tid = self.tokenizer.convert_tokens_to_ids(token)
        if not isinstance(tid, int) or tid < 0 or tid == self.tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no {token} token: not a Qwen-VL tokenizer")
        return tid

    # ---------------------------------------------------------------- text rendering
    def render(self, messages: Prompt, *, add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(
            _strip_images(messages), tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def encode_text(self, text: str, images: Sequence[Any] = ()) -> Encoded:
        """Tokenise rendered text; each ``<|image_pad|>`` (one per image, in order) is expanded."""
        n_pads = text.count(IMAGE_TOKEN)
        if n_pads != len(images):
            raise ValueError(f"text holds {n_pads} {IMAGE_TOKEN} but {len(images)} image(s) were given")
        if not images:
            return Encoded(self._tokenize(text))
        pixel_values, grid = self.image_processor(list(images))
        merge = self.image_processor.merge_size**2
        pieces = text.split(IMAGE_TOKEN)
        ids: list[int] = []
        for i, piece in enumerate(pieces):
            if piece:
                ids.extend(self._tokenize(piece))
            if i < len(images):
                ids.extend([self.image_token_id] * (int(grid[i].prod()) // merge))
        return Encoded(ids, pixel_values, grid, [to_uint8_rgb(im) for im in images])

    def _tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_prompt(self, messages: Prompt) -> Encoded:
        """The chat prefix (default system message if none, every message, the assistant header)."""
        return self.encode_text(self.render(messages, add_generation_prompt=True), prompt_images(messages))

    def user_turn_text(self, content: str | list[dict[str, Any]], *, close_assistant: bool = False) -> str:
        """Template text between a generated assistant turn and the next generation.

        Generated ids normally end with the end-of-turn token (``<|im_end|>``); pass
        ``close_assistant=True`` when they do not (cut by ``max_new_tokens``) so the suffix closes it.
        """
        base: Prompt = [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": _MARK},
        ]
        full = self.render([*base, {"role": "user", "content": content}], add_generation_prompt=True)
        if full.count(_MARK) != 1:
            raise ValueError("the chat template does not keep assistant text verbatim; cannot encode a turn suffix")
        suffix = full.split(_MARK, 1)[1]
        if not close_assistant and suffix.startswith(self.eos_text):
            suffix = suffix[len(self.eos_text) :]
        return suffix

    def encode_user_turn(self, content: str | list[dict[str, Any]], *, close_assistant: bool = False) -> Encoded:
        """Ids (and images) to append after a generated turn: next user message + assistant header."""
        images = prompt_images([{"role": "user", "content": content}]) if isinstance(content, list) else []
        return self.encode_text(self.user_turn_text(content, close_assistant=close_assistant), images)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)

    # ---------------------------------------------------------------- batching
    def mm_token_type_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """0 text, 1 image, 2 video — what Qwen-VL's 3-D rope index needs."""
        out = torch.zeros_like(input_ids, dtype=torch.int32)
        out[input_ids == self.image_token_id] = 1
        out[input_ids == self.video_token_id] = 2
        return out

    def collate(self, seqs: Sequence[Encoded], *, padding_side: str = "left") -> dict[str, torch.Tensor]:
        """Pad a batch: ``input_ids``, ``attention_mask``, ``mm_token_type_ids`` and, if any image,
        ``pixel_values`` / ``image_grid_thw`` (concatenated in batch order)."""
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side={padding_side!r}; use 'left' or 'right'")
        if not seqs:
            raise ValueError("empty batch")
        for i, s in enumerate(seqs):
            n_pad = sum(1 for t in s.input_ids if t == self.image_token_id)
            expected = 0
            if s.image_grid_thw is not None:
                expected = int(s.image_grid_thw.prod(dim=-1).sum()) // self.image_processor.merge_size**2
            if n_pad != expected:
                raise ValueError(f"sequence {i}: {n_pad} image tokens but its images need {expected}")
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            row = torch.tensor(s.input_ids, dtype=torch.long)
            if padding_side == "left":
                ids[i, width - len(row) :] = row
                mask[i, width - len(row) :] = 1
            else:
                ids[i, : len(row)] = row
                mask[i, : len(row)] = 1
        batch = {"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": self.mm_token_type_ids(ids)}
        pvs = [s.pixel_values for s in seqs if s.pixel_values is not None]
        grids = [s.image_grid_thw for s in seqs if s.image_grid_thw is not None]
        if pvs:
            batch["pixel_values"] = torch.cat(pvs, dim=0)
            batch["image_grid_thw"] = torch.cat(grids, dim=0)
        return batch

    # ---------------------------------------------------------------- persistence
    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(directory))
        self.image_processor.save_pretrained(directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> PolicyProcessor:
        from transformers import AutoTokenizer

        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"model folder {directory} does not exist")
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        tokenizer.padding_side = "left"
        if getattr(tokenizer, "chat_template", None) is None:
            tmpl = directory / "chat_template.json"
            if tmpl.is_file():
                tokenizer.chat_template = json.loads(tmpl.read_text())["chat_template"]
        return cls(tokenizer, QwenImageProcessor.from_pretrained(directory))
