"""Model loading (tiny default or a local Qwen-VL folder), device/dtype, LoRA, gradient checkpointing,
the value head, and per-token log-probs / values / entropy of given sequences.

One code path: the tiny default is *created* once (config → random init, tokenizer trained on the envs'
text), saved as a plain Hugging Face folder under ``init_dir`` and then loaded from that folder exactly
like ``model.path=DIR``. Nothing is downloaded (``local_files_only=True`` everywhere).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from atlasva.policy.config import DTYPES, ModelConfig, TinyModelConfig
from atlasva.policy.processor import Encoded, PolicyProcessor, QwenImageProcessor
from atlasva.policy.tokenizer import (
    EOS_TOKEN,
    IMAGE_TOKEN,
    PAD_TOKEN,
    VIDEO_TOKEN,
    VISION_END,
    VISION_START,
    build_tokenizer,
    special_token_ids,
)

log = logging.getLogger(__name__)

VALUE_HEAD_FILE = "value_head.safetensors"
SUPPORTED_MODEL_TYPES = ("qwen2_5_vl", "qwen2_vl", "qwen3_vl")
_TINY_MARKER = "atlasva_tiny.json"
#: log-prob reported for tokens the policy can never emit (special / vision tokens inside prompts):
#: finite, so ``logprobs * mask`` stays NaN-free, and far below any real log-prob
MASKED_LOGPROB = -1.0e4


# --------------------------------------------------------------------------- device and dtype
def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` → the first CUDA device if there is one, else the CPU."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"model.device={spec!r} but CUDA is not available; use 'cpu' or 'auto'")
        return torch.device(spec)
    raise ValueError(f"model.device={spec!r} is not accepted; use 'auto', 'cpu', 'cuda' or 'cuda:N'")


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """``auto`` → bfloat16 on a GPU that supports it, float32 otherwise."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if spec not in table:
        raise ValueError(f"model.dtype={spec!r} is not accepted; use one of {', '.join(DTYPES)}")
    return table[spec]


# --------------------------------------------------------------------------- the tiny default
def _mrope_section(head_dim: int, layout: str = "interleaved") -> list[int]:
    """How the rotary half-dim splits over (t, h, w).

    ``chunked``: Qwen2.5-VL's own split (t:h:w = 1:1.5:1.5, in frequency order). It leaves image columns
    the lowest frequencies: at head_dim 32 and θ = 10⁴ adjacent columns differ by 0.003 rad, so a tiny LM
    cannot tell cells apart and learns a blind plan (measured: SFT success 0.425 = the best fixed plan's
    0.42 on 4×4 lakes, whatever the amount of SFT data). ``interleaved``: Qwen2.5-VL's rotary embedding
    cycles through its sections (``i % 3``), so one-frequency sections give each axis the whole spectrum
    (Qwen3-VL's layout); adjacent rows / columns then differ by 0.56 / 0.32 rad. Text is unaffected (its
    t, h and w positions are equal). Loaded checkpoints keep their own split.
    """
    half = head_dim // 2
    if layout == "interleaved":
        return [1] * half
    if layout == "chunked":
        t = max(1, half // 4)
        h = (half - t) // 2
        return [t, h, half - t - h]
    raise ValueError(f"tiny.mrope_layout={layout!r}; accepted: interleaved, chunked")


def qwen25_vl_config(text: dict[str, Any], vision: dict[str, Any], tokenizer: Any) -> Any:
    """A ``Qwen2_5_VLConfig`` with this geometry whose token ids agree with ``tokenizer`` (the vocabulary is
    at least the tokenizer's size rounded up to 64)."""
    from transformers import Qwen2_5_VLConfig

    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in (IMAGE_TOKEN, VIDEO_TOKEN, VISION_START, VISION_END)}
    text = {**text, "vocab_size": max(int(text.get("vocab_size", 0)), -(-len(tokenizer) // 64) * 64),
            "bos_token_id": None, "eos_token_id": tokenizer.convert_tokens_to_ids(EOS_TOKEN),
            "pad_token_id": tokenizer.convert_tokens_to_ids(PAD_TOKEN)}
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids[IMAGE_TOKEN],
        video_token_id=ids[VIDEO_TOKEN],
        vision_start_token_id=ids[VISION_START],
        vision_end_token_id=ids[VISION_END],
        tie_word_embeddings=text.get("tie_word_embeddings", True),
    )


def tiny_model_config(cfg: TinyModelConfig, tokenizer: Any) -> Any:
    """A ``Qwen2_5_VLConfig`` for the tiny policy whose token ids agree with ``tokenizer``."""
    if cfg.hidden_size % cfg.num_attention_heads:
        raise ValueError(f"tiny.hidden_size={cfg.hidden_size} must be divisible by num_attention_heads")
    if cfg.vision_hidden_size % cfg.vision_num_heads:
        raise ValueError(f"tiny.vision_hidden_size={cfg.vision_hidden_size} must be divisible by vision_num_heads")
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    text = {
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta, "mrope_section": _mrope_section(head_dim, cfg.mrope_layout)},
        "use_sliding_window": False,
        "tie_word_embeddings": cfg.tie_word_embeddings,
    }
    vision = {
        "depth": cfg.vision_depth,
        "hidden_size": cfg.vision_hidden_size,
        "intermediate_size": cfg.vision_intermediate_size,
        "num_heads": cfg.vision_num_heads,
        "out_hidden_size": cfg.hidden_size,
        "patch_size": cfg.patch_size,
        "spatial_merge_size": cfg.spatial_merge_size,
        "temporal_patch_size": cfg.temporal_patch_size,
        "window_size": cfg.patch_size * cfg.spatial_merge_size * 4,
        "fullatt_block_indexes": [cfg.vision_depth - 1],
    }
    return qwen25_vl_config(text, vision, tokenizer)


def _tiny_fingerprint(cfg: TinyModelConfig) -> dict[str, Any]:
    from dataclasses import asdict

    return {"tiny": asdict(cfg), "version": 2}  # 2: interleaved M-RoPE


def create_tiny_policy(directory: str | Path, cfg: TinyModelConfig | None = None, *, corpus: Sequence[str] | None = None) -> Path:
    """Create the tiny default policy (model + tokenizer + image processor) as an HF folder, once.

    If ``directory`` already holds a tiny policy made from the same config it is reused; a folder
    made from a different config is an error (never silently mixed). Written atomically.
    """
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    cfg = cfg or TinyModelConfig()
    directory = Path(directory)
    marker = directory / _TINY_MARKER
    fingerprint = _tiny_fingerprint(cfg)
    if marker.is_file():
        if json.loads(marker.read_text()) != fingerprint:
            raise ValueError(f"{directory} holds a tiny policy built from a different model.tiny config; "
                             "use another init_dir or delete it")
        return directory
    if directory.exists() and any(directory.iterdir()):
        raise ValueError(f"{directory} exists and is not a tiny-policy folder; refusing to overwrite it")
    tokenizer = build_tokenizer(cfg.vocab_size, corpus)
    image_processor = QwenImageProcessor(
        patch_size=cfg.patch_size, merge_size=cfg.spatial_merge_size, temporal_patch_size=cfg.temporal_patch_size,
        min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels,
    )
    config = tiny_model_config(cfg, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        eos_token_id=config.text_config.eos_token_id, pad_token_id=config.text_config.pad_token_id, bos_token_id=None
    )
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        model.save_pretrained(str(tmp))
        PolicyProcessor(tokenizer, image_processor).save_pretrained(tmp)
        (tmp / _TINY_MARKER).write_text(json.dumps(fingerprint, indent=2) + "\n")
        if directory.exists():
            directory.rmdir()
        try:
            os.replace(tmp, directory)
        except OSError:  # another process won the race: use its folder if it is the same tiny policy
            if not marker.is_file() or json.loads(marker.read_text()) != fingerprint:
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


# --------------------------------------------------------------------------- loading
def load_model(path: str | Path, *, device: torch.device, dtype: torch.dtype, attn_implementation: str = "sdpa") -> Any:
    """Any supported Qwen-VL checkpoint from a local folder (never from a hub)."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model.path={str(path)!r} is not a local model folder (no config.json)")
    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"model.path holds a {config.model_type!r} model; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    model = AutoModelForImageTextToText.from_pretrained(
        str(path), dtype=dtype, attn_implementation=attn_implementation, local_files_only=True
    )
    return model.to(device)


def model_folder(cfg: ModelConfig, init_dir: str | Path | None = None) -> Path:
    """``model.path``, or the tiny default created (once) in ``init_dir`` / ``model.init_dir``."""
    if cfg.path:
        return Path(cfg.path).expanduser()
    folder = init_dir or cfg.init_dir
    if not folder:
        raise ValueError("the tiny default policy needs a folder to live in: set model.init_dir "
                         "(e.g. RUN/policy-init) or pass init_dir=")
    return create_tiny_policy(folder, cfg.tiny)


def allowed_token_ids(processor: PolicyProcessor, vocab_size: int) -> list[int]:
    """Ids the policy may generate: every real token except special and vision tokens, plus the
    end-of-turn token (embedding rows past the tokenizer have no token and stay out)."""
    blocked = set(special_token_ids(processor.tokenizer))
    ids = {i for i in range(min(vocab_size, len(processor.tokenizer))) if i not in blocked}
    if processor.eos_token_id < vocab_size:
        ids.add(processor.eos_token_id)
    return sorted(ids)


class ValueHead(nn.Module):
    """V(s) from the last hidden state: one linear layer, zero-initialised (values start at 0), fp32."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden.to(self.proj.weight.dtype)).squeeze(-1)


def apply_lora(model: Any, settings: Any) -> Any:
    """Wrap ``model`` with peft LoRA adapters on the language model (and optionally the vision tower)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("model.lora.enable=true needs peft: pip install 'atlasva[train]'") from exc
    names = "|".join(sorted(set(settings.target_modules)))
    if not names:
        raise ValueError("model.lora.target_modules is empty")
    scope = r"(language_model|visual)" if settings.vision else r"language_model"
    extra = "|qkv|proj" if settings.vision else ""
    pattern = rf".*{scope}\..*\.({names}{extra})$"
    config = LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout, target_modules=pattern, bias="none"
    )
    return get_peft_model(model, config)


def enable_gradient_checkpointing(model: Any) -> None:
    """Non-reentrant activation checkpointing (works with LoRA and frozen embeddings), no KV cache in training."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # pragma: no cover - older transformers
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False


def is_gradient_checkpointing(model: Any) -> bool:
    base = unwrap(model)
    flag = getattr(base, "is_activation_checkpointing", None)
    if flag is None:  # pragma: no cover - older transformers
        flag = getattr(base, "is_gradient_checkpointing", False)
    return bool(flag)


def unwrap(model: Any) -> Any:
    """The ``…ForConditionalGeneration`` under a peft wrapper (LoRA layers stay in place)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


# --------------------------------------------------------------------------- scores
@dataclass
class SequenceScores:
    """Per-token quantities of given sequences, aligned with ``input_ids`` (B, L).

    ``logprobs[:, t] = log π(x_t | x_<t)`` under the policy's token distribution (special and vision
    tokens masked out, logits / temperature; a token the policy can never emit, e.g. ``<|image_pad|>`` in a
    prompt, gets :data:`MASKED_LOGPROB`); ``values[:, t] = V(h_{t-1})``, the value of the state in
    which token ``t`` was chosen; ``entropy[:, t]`` the entropy of that distribution. Position 0,
    padding and positions outside ``positions`` are 0.
    """

    logprobs: torch.Tensor
    values: torch.Tensor | None = None
    entropy: torch.Tensor | None = None


class PolicyModel:
    """A loaded Qwen-VL model with its processor, token mask, optional value head, LoRA and checkpointing."""

    def __init__(self, model: Any, processor: PolicyProcessor, *, value_head: ValueHead | None = None) -> None:
        self.model = model
        self.processor = processor
        self.value_head = value_head
        base = unwrap(model)
        vocab = int(base.get_output_embeddings().weight.shape[0])
        allowed = torch.zeros(vocab, dtype=torch.bool)
        allowed[allowed_token_ids(processor, vocab)] = True
        self.allowed = allowed.to(self.device)
        self.blocked_ids = sorted(set(range(vocab)) - set(torch.nonzero(allowed).flatten().tolist()))

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_config(cls, cfg: ModelConfig, *, init_dir: str | Path | None = None) -> PolicyModel:
        """``cfg.path`` set → load that folder; otherwise create/reuse the tiny policy in ``init_dir``."""
        device = resolve_device(cfg.device)
        dtype = resolve_dtype(cfg.dtype, device)
        if cfg.cpu_threads < 0:
            raise ValueError(f"model.cpu_threads={cfg.cpu_threads} must be >= 0 (0 = torch's default)")
        if cfg.cpu_threads:
            torch.set_num_threads(cfg.cpu_threads)
        path = model_folder(cfg, init_dir)
        return cls.from_pretrained(
            path, device=device, dtype=dtype, attn_implementation=cfg.attn_implementation,
            value_head=cfg.value_head, lora=cfg.lora if cfg.lora.enable else None,
            gradient_checkpointing=cfg.gradient_checkpointing,
        )

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | str = torch.float32,
        attn_implementation: str = "sdpa",
        value_head: bool = False,
        lora: Any = None,
        gradient_checkpointing: bool = False,
    ) -> PolicyModel:
        device = resolve_device(device) if isinstance(device, str) else device
        dtype = resolve_dtype(dtype, device) if isinstance(dtype, str) else dtype
        if not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(f"model.path={str(path)!r} is not a local model folder (no config.json)")
        processor = PolicyProcessor.from_pretrained(path)
        model = load_model(path, device=device, dtype=dtype, attn_implementation=attn_implementation)
        model.eval()
        head = None
        if value_head or (Path(path) / VALUE_HEAD_FILE).is_file():
            head = ValueHead(int(model.config.get_text_config().hidden_size))
            file = Path(path) / VALUE_HEAD_FILE
            if file.is_file():
                from safetensors.torch import load_file

                head.load_state_dict(load_file(str(file)))
            head.to(device)
        if gradient_checkpointing:
            enable_gradient_checkpointing(model)
        if lora is not None:
            model = apply_lora(model, lora)
        return cls(model, processor, value_head=head)

    # ---------------------------------------------------------------- basics
    @property
    def base(self) -> Any:
        return unwrap(self.model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.base.get_input_embeddings().parameters()).dtype

    @property
    def gradient_checkpointing(self) -> bool:
        return is_gradient_checkpointing(self.model)

    @property
    def is_lora(self) -> bool:
        return hasattr(self.model, "peft_config")

    def train(self, mode: bool = True) -> PolicyModel:
        self.model.train(mode)
        if self.value_head is not None:
            self.value_head.train(mode)
        return self

    def eval(self) -> PolicyModel:
        return self.train(False)

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.value_head is not None:
            params += [p for p in self.value_head.parameters() if p.requires_grad]
        return params

    def mask_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Special / vision / unused tokens → -inf (the end-of-turn token stays)."""
        allowed = self.allowed.to(logits.device)
        if logits.shape[-1] != allowed.shape[0]:
            raise ValueError(f"logits have {logits.shape[-1]} entries but the vocab mask has {allowed.shape[0]}")
        return logits.masked_fill(~allowed, float("-inf"))

    # ---------------------------------------------------------------- forward
    def position_ids(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(4, B, L): text positions (row 0) + Qwen-VL's 3-D rope positions — what ``generate`` builds."""
        mask = batch["attention_mask"]
        text = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        if batch.get("image_grid_thw") is not None:
            vision, _ = self.base.model.get_rope_index(
                batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"],
                image_grid_thw=batch["image_grid_thw"], attention_mask=mask,
            )
        else:
            vision = text[None].expand(3, -1, -1)
        return torch.cat([text[None], vision.to(text.device)], dim=0)

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {k: v.to(self.device) for k, v in batch.items()}
        if "pixel_values" in out:
            out["pixel_values"] = out["pixel_values"].to(self.dtype)
        return out

    def hidden_states(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Last hidden states (B, L, H) of a collated batch (any padding side)."""
        batch = self.to_device(batch)
        out = self.base.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=self.position_ids(batch),
            pixel_values=batch.get("pixel_values"),
            image_grid_thw=batch.get("image_grid_thw"),
            mm_token_type_ids=batch["mm_token_type_ids"],
            use_cache=False,
        )
        return out.last_hidden_state

    def score(
        self,
        batch: dict[str, torch.Tensor] | Sequence[Encoded],
        *,
        temperature: float = 1.0,
        positions: torch.Tensor | None = None,
        with_values: bool = False,
        with_entropy: bool = False,
        chunk_tokens: int = 4096,
        detach_values: bool = False,
    ) -> SequenceScores:
        """Per-token log-probs (and values / entropy) of full sequences; differentiable.

        ``batch`` is a collated dict (``PolicyProcessor.collate``) or a list of :class:`Encoded`
        (collated here with right padding). ``positions`` (B, L) bool limits the vocabulary
        projection to the tokens that matter (e.g. the loss mask) — the memory saver for real vocabularies.
        """
        if not isinstance(batch, dict):
            batch = self.processor.collate(list(batch), padding_side="right")
        if temperature <= 0:
            temperature = 1.0
        if with_values and self.value_head is None:
            raise ValueError("with_values=True needs a value head (model.value_head=true)")
        hidden = self.hidden_states(batch)
        ids = batch["input_ids"].to(hidden.device)
        mask = batch["attention_mask"].to(hidden.device).bool()
        bsz, length = ids.shape
        # token t is scored from the hidden state at t-1
        want = mask[:, 1:] & mask[:, :-1]
        if positions is not None:
            want = want & positions.to(hidden.device).bool()[:, 1:]
        flat = torch.nonzero(want.reshape(-1)).flatten()
        rows, cols = flat // (length - 1), flat % (length - 1)
        h = hidden[rows, cols]  # (N, H): states before each scored token
        targets = ids[rows, cols + 1]
        lp_parts, ent_parts = [], []
        head = self.base.get_output_embeddings()
        for start in range(0, h.shape[0], chunk_tokens):
            logits = head(h[start : start + chunk_tokens]).float()
            logp = torch.log_softmax(self.mask_logits(logits) / temperature, dim=-1)
            lp = logp.gather(-1, targets[start : start + chunk_tokens, None]).squeeze(-1)
            lp_parts.append(torch.where(torch.isfinite(lp), lp, torch.full_like(lp, MASKED_LOGPROB)))
            if with_entropy:
                p = logp.exp()
                ent_parts.append(-(p * logp.masked_fill(p == 0, 0.0)).sum(-1))
        logprobs = hidden.new_zeros((bsz, length), dtype=torch.float32)
        if lp_parts:
            logprobs = logprobs.index_put((rows, cols + 1), torch.cat(lp_parts))
        entropy = None
        if with_entropy:
            entropy = hidden.new_zeros((bsz, length), dtype=torch.float32)
            if ent_parts:
                entropy = entropy.index_put((rows, cols + 1), torch.cat(ent_parts))
        values = None
        if with_values:
            assert self.value_head is not None
            hv = h.detach() if detach_values else h  # detached: the critic cannot move the policy's trunk
            v = self.value_head(hv) if hv.shape[0] else hv.new_zeros(0, dtype=torch.float32)
            values = hidden.new_zeros((bsz, length), dtype=torch.float32).index_put((rows, cols + 1), v.float())
        return SequenceScores(logprobs=logprobs, values=values, entropy=entropy)

    # ---------------------------------------------------------------- saving
    def merged_state_dict(self) -> dict[str, torch.Tensor]:
        """The plain model's weights under its Hugging Face names, LoRA adapters merged in (copies when
        LoRA is on, the live tensors otherwise): what a saved folder holds and what vLLM loads."""
        base = self.base
        if not self.is_lora:
            return dict(base.state_dict())
        self.model.merge_adapter()
        try:
            return {key.replace(".base_layer.", "."): value.detach().clone()
                    for key, value in base.state_dict().items() if "lora_" not in key}
        finally:
            self.model.unmerge_adapter()

    def save_pretrained(self, directory: str | Path) -> Path:
        """A plain Hugging Face folder (LoRA merged into the weights), plus ``value_head.safetensors``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        base = self.base
        if self.is_lora:
            # peft may have touched the config; what we write is a plain model
            base.save_pretrained(str(directory), state_dict=self.merged_state_dict())
        else:
            base.save_pretrained(str(directory))
        self.processor.save_pretrained(directory)
        if self.value_head is not None:
            from safetensors.torch import save_file

            save_file({k: v.detach().cpu().contiguous() for k, v in self.value_head.state_dict().items()},
                      str(directory / VALUE_HEAD_FILE))
        return directory
