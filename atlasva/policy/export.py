"""A Qwen2.5-VL policy's language model as a text-only ``Qwen2ForCausalLM`` folder.

For engines that cannot run the vision stack — vLLM's CPU build here: its Qwen2-VL module imports
transformers' torchvision image processor, and PyPI's torchvision does not import beside the CPU torch —
the decoder alone serves text observations. For text, M-RoPE with equal time/height/width positions is
plain RoPE, so the export gives the same logits as the full model (tested). Its parameter names follow
:func:`text_weight_name`, which :class:`~atlasva.policy.backends.VLLMBackend` takes as ``weight_name`` to keep
such an engine in step with the trained model.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

LANGUAGE_PREFIX = "model.language_model."
TOKENIZER_FILES = ("tokenizer", "special_tokens", "chat_template", "generation_config", "preprocessor_config")


def text_weight_name(name: str) -> str | None:
    """Qwen2.5-VL parameter name → the text-only export's (None: the vision tower, not exported)."""
    if name.startswith(LANGUAGE_PREFIX):
        return "model." + name[len(LANGUAGE_PREFIX):]
    return name if name == "lm_head.weight" else None


def export_text_model(policy_model: Any, source: str | Path, directory: str | Path) -> Path:
    """Write the decoder of ``policy_model`` (loaded from ``source``) with its tokenizer files to ``directory``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    base = policy_model.base
    text = base.config.text_config
    rope = dict(text.rope_parameters or {})
    cfg = Qwen2Config(
        vocab_size=text.vocab_size, hidden_size=text.hidden_size, intermediate_size=text.intermediate_size,
        num_hidden_layers=text.num_hidden_layers, num_attention_heads=text.num_attention_heads,
        num_key_value_heads=text.num_key_value_heads, max_position_embeddings=text.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": rope.get("rope_theta", 10000.0)},
        rms_norm_eps=text.rms_norm_eps, hidden_act=text.hidden_act, tie_word_embeddings=base.config.tie_word_embeddings,
        eos_token_id=text.eos_token_id, pad_token_id=text.pad_token_id, bos_token_id=None, use_sliding_window=False,
    )
    model = Qwen2ForCausalLM(cfg)
    state = {new: t for name, t in policy_model.merged_state_dict().items() if (new := text_weight_name(name))}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:  # a tied head has no weight of its own
        raise ValueError(f"text export: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    directory = Path(directory)
    model.save_pretrained(str(directory))
    for f in Path(source).iterdir():
        if f.name.startswith(TOKENIZER_FILES):
            shutil.copy(f, directory / f.name)
    return directory
