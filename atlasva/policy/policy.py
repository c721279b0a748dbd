"""The policy facade the agent loop and trainers use: one object, one ``generate`` for every backend."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from atlasva.policy.backends import GenerationOutput, HFBackend, OpenAIBackend, VLLMBackend
from atlasva.policy.config import BACKENDS, PolicyConfig, SamplingConfig
from atlasva.policy.model import PolicyModel, SequenceScores, allowed_token_ids, model_folder
from atlasva.policy.processor import Encoded, PolicyProcessor, Prompt


class Policy:
    """A generation backend plus, for local backends, the model that training updates.

    ``generate(prompts)`` takes chat prompts (see :mod:`atlasva.policy.processor`) or, with the ``hf`` and
    ``vllm`` backends (``token_level``), :class:`Encoded` token sequences (multi-turn: prefix + generated
    ids + user-turn suffixes).

    With ``vllm`` the trainable local model is loaded the first time ``policy.model`` is used (a trainer
    does; evaluation does not, so it never holds a second copy of the weights); from then on the engine
    follows that model's weights (``policy.vllm.sync_weights``).
    """

    def __init__(self, backend: Any, model: PolicyModel | None = None, config: PolicyConfig | None = None,
                 *, processor: PolicyProcessor | None = None, model_loader: Callable[[], PolicyModel] | None = None) -> None:
        self.backend = backend
        self._model = model
        self._processor = processor
        self._model_loader = model_loader
        self.config = config or PolicyConfig()

    @classmethod
    def from_config(cls, cfg: PolicyConfig | None = None, *, init_dir: str | Path | None = None) -> Policy:
        """``backend=hf``: load ``model.path`` or create/reuse the tiny default in ``init_dir``
        (or ``model.init_dir``). ``backend=vllm``: a vLLM engine on that same folder. ``backend=openai``:
        no local model."""
        cfg = cfg or PolicyConfig()
        if cfg.backend not in BACKENDS:
            raise ValueError(f"policy backend {cfg.backend!r} is not accepted; use one of {', '.join(BACKENDS)}")
        if cfg.backend == "openai":
            return cls(OpenAIBackend(cfg.openai, cfg.sampling), None, cfg)
        if cfg.backend == "vllm":
            return cls._vllm(cfg, init_dir)
        model = PolicyModel.from_config(cfg.model, init_dir=init_dir)
        return cls(HFBackend(model, cfg.sampling), model, cfg)

    @classmethod
    def _vllm(cls, cfg: PolicyConfig, init_dir: str | Path | None) -> Policy:
        path = model_folder(cfg.model, init_dir)
        processor = PolicyProcessor.from_pretrained(path)
        vocab = _vocab_size(path)
        backend = VLLMBackend(path, processor, cfg.vllm, cfg.sampling,
                              allowed_token_ids=allowed_token_ids(processor, vocab), vocab_size=vocab)

        def load() -> PolicyModel:
            model = PolicyModel.from_pretrained(
                path, device=cfg.model.device, dtype=cfg.model.dtype, attn_implementation=cfg.model.attn_implementation,
                value_head=cfg.model.value_head, lora=cfg.model.lora if cfg.model.lora.enable else None,
                gradient_checkpointing=cfg.model.gradient_checkpointing,
            )
            backend.attach_source(model)
            return model

        return cls(backend, None, cfg, processor=processor, model_loader=load)

    @property
    def model(self) -> PolicyModel | None:
        if self._model is None and self._model_loader is not None:
            self._model = self._model_loader()
            self._model_loader = None
        return self._model

    @property
    def token_level(self) -> bool:
        """True when prompts are token ids (:class:`Encoded`) and outputs token ids + log-probs: the policy
        has a tokenizer of its own (a local model, or the vllm backend's processor)."""
        return self._model is not None or self._processor is not None or self._model_loader is not None

    # ---------------------------------------------------------------- generation
    def generate(
        self, prompts: Sequence[Prompt | Encoded], *, seed: int | None = None, sampling: SamplingConfig | None = None,
        request_ids: Sequence[Any] | None = None,
    ) -> list[GenerationOutput]:
        return self.backend.generate(prompts, seed=seed, sampling=sampling, request_ids=request_ids)

    # ---------------------------------------------------------------- token-level helpers
    def _need_model(self) -> PolicyModel:
        model = self.model
        if model is None:
            raise RuntimeError(f"the {self.config.backend!r} backend has no local model; token-level functions "
                               "(encode, score, save) need backend=hf or vllm")
        return model

    @property
    def processor(self) -> PolicyProcessor:
        if self._processor is not None:
            return self._processor
        return self._need_model().processor

    def encode_prompt(self, messages: Prompt) -> Encoded:
        return self.processor.encode_prompt(messages)

    def encode_user_turn(self, content: str | list[dict[str, Any]], *, close_assistant: bool = False) -> Encoded:
        return self.processor.encode_user_turn(content, close_assistant=close_assistant)

    def score(self, batch: dict[str, torch.Tensor] | Sequence[Encoded], **kwargs: Any) -> SequenceScores:
        return self._need_model().score(batch, **kwargs)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return self._need_model().trainable_parameters()

    def save_pretrained(self, directory: str | Path) -> Path:
        return self._need_model().save_pretrained(directory)


def _vocab_size(path: Path) -> int:
    import json

    cfg = json.loads((Path(path) / "config.json").read_text())
    return int((cfg.get("text_config") or cfg)["vocab_size"])
