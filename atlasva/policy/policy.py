"""The policy facade the agent loop and trainers use: one object, one ``generate`` for every backend."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from atlasva.policy.backends import GenerationOutput, HFBackend, OpenAIBackend
from atlasva.policy.config import BACKENDS, PolicyConfig, SamplingConfig
from atlasva.policy.model import PolicyModel, SequenceScores
from atlasva.policy.processor import Encoded, PolicyProcessor, Prompt


class Policy:
    """A generation backend plus, for local backends, the model that training updates.

    ``generate(prompts)`` takes chat prompts (see :mod:`atlasva.policy.processor`) or, with the ``hf``
    backend, :class:`Encoded` token sequences (multi-turn: prefix + generated ids + user-turn suffixes).
    """

    def __init__(self, backend: Any, model: PolicyModel | None = None, config: PolicyConfig | None = None) -> None:
        self.backend = backend
        self.model = model
        self.config = config or PolicyConfig()

    @classmethod
    def from_config(cls, cfg: PolicyConfig | None = None, *, init_dir: str | Path | None = None) -> Policy:
        """``backend=hf``: load ``model.path`` or create/reuse the tiny default in ``init_dir``
        (or ``model.init_dir``). ``backend=openai``: no local model."""
        cfg = cfg or PolicyConfig()
        if cfg.backend not in BACKENDS:
            raise ValueError(f"policy backend {cfg.backend!r} is not accepted; use one of {', '.join(BACKENDS)}")
        if cfg.backend == "openai":
            return cls(OpenAIBackend(cfg.openai, cfg.sampling), None, cfg)
        model = PolicyModel.from_config(cfg.model, init_dir=init_dir)
        return cls(HFBackend(model, cfg.sampling), model, cfg)

    # ---------------------------------------------------------------- generation
    def generate(
        self, prompts: Sequence[Prompt | Encoded], *, seed: int | None = None, sampling: SamplingConfig | None = None,
        request_ids: Sequence[Any] | None = None,
    ) -> list[GenerationOutput]:
        return self.backend.generate(prompts, seed=seed, sampling=sampling, request_ids=request_ids)

    # ---------------------------------------------------------------- token-level helpers
    def _need_model(self) -> PolicyModel:
        if self.model is None:
            raise RuntimeError(f"the {self.config.backend!r} backend has no local model; token-level functions "
                               "(encode, score, save) need backend=hf")
        return self.model

    @property
    def processor(self) -> PolicyProcessor:
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
