"""Policy: model + processor loading (tiny default, or any local Qwen2.5-VL folder), generation backends.

Quick use::

    from atlasva.policy import Policy, PolicyConfig
    policy = Policy.from_config(PolicyConfig(), init_dir="runs/x/policy-init")  # tiny, made on the fly
    outs = policy.generate([[{"role": "user", "content": [{"type": "image", "image": img},
                                                          {"type": "text", "text": "Move?"}]}]])
    outs[0].token_ids, outs[0].text, outs[0].logprobs, outs[0].finish_reason

Multi-turn without re-tokenising::

    seq = policy.encode_prompt(messages)                  # system + first user turn + assistant header
    out = policy.generate([seq])[0]
    seq = seq + out.token_ids + policy.encode_user_turn(next_content,
                                                        close_assistant=out.finish_reason != "stop")
    scores = policy.score([seq], with_values=True)        # per-token log-probs / values
"""

from atlasva.policy.backends import (
    GenerationBackend,
    GenerationOutput,
    HFBackend,
    OpenAIBackend,
    OpenAIError,
    image_data_url,
    to_openai_messages,
)
from atlasva.policy.config import (
    LoraSettings,
    ModelConfig,
    OpenAIConfig,
    PolicyConfig,
    SamplingConfig,
    TinyModelConfig,
)
from atlasva.policy.model import (
    PolicyModel,
    SequenceScores,
    ValueHead,
    create_tiny_policy,
    load_model,
    resolve_device,
    resolve_dtype,
)
from atlasva.policy.policy import Policy
from atlasva.policy.processor import (
    Encoded,
    PolicyProcessor,
    Prompt,
    QwenImageProcessor,
    content_from_obs,
    smart_resize,
)
from atlasva.policy.tokenizer import QWEN_SPECIAL_TOKENS, build_tokenizer, env_corpus

__all__ = [
    "Encoded",
    "GenerationBackend",
    "GenerationOutput",
    "HFBackend",
    "LoraSettings",
    "ModelConfig",
    "OpenAIBackend",
    "OpenAIConfig",
    "OpenAIError",
    "Policy",
    "PolicyConfig",
    "PolicyModel",
    "PolicyProcessor",
    "Prompt",
    "QWEN_SPECIAL_TOKENS",
    "QwenImageProcessor",
    "SamplingConfig",
    "SequenceScores",
    "TinyModelConfig",
    "ValueHead",
    "build_tokenizer",
    "content_from_obs",
    "create_tiny_policy",
    "env_corpus",
    "image_data_url",
    "load_model",
    "resolve_device",
    "resolve_dtype",
    "smart_resize",
    "to_openai_messages",
]
