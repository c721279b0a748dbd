"""verl agent loop ``atlasva``: one atlasva episode per dataset row, through atlasva's own AgentLoop.

verl calls ``await AtlasvaAgentLoop.run(sampling_params, **row)`` on its event loop. The episode runs in a
worker thread: atlasva's synchronous :class:`~atlasva.rollout.loop.AgentLoop` (env pool, reasoning format,
memory injection and shaping from the latest published snapshot, token-in/token-out sequences, turn
limits) with a :class:`ServerPolicy` whose ``generate`` schedules verl's async ``server_manager.generate``
back on the event loop (``asyncio.run_coroutine_threadsafe``) and waits for it. So the turn logic exists
once, and verl's rollout is atlasva's rollout with verl's inference servers.

Register it with verl by importing this module in every Ray worker (the launcher sets Ray's
``worker_process_setup_hook``) or through ``actor_rollout_ref.rollout.agent.agent_loop_config_path``
(``[{name: atlasva, _target_: atlasva.integrations.verl.agent_loop.AtlasvaAgentLoop}]``).
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from uuid import uuid4

from PIL import Image
from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopMetrics, AgentLoopOutput, register

from atlasva.envs.pool import EnvPool, InProcessEnvPool
from atlasva.integrations.verl.config import LAYOUTS
from atlasva.integrations.verl.memory_sync import store_at
from atlasva.integrations.verl.outputs import verl_outputs
from atlasva.policy.backends import GenerationOutput, vllm_token_mask
from atlasva.policy.config import PolicyConfig, SamplingConfig
from atlasva.policy.model import allowed_token_ids
from atlasva.policy.processor import Encoded, PolicyProcessor
from atlasva.rollout.loop import AgentLoop, EpisodeRequest, RolloutConfig

# episodes block on generations most of the time: many threads, few cores busy
_EPISODE_THREADS = ThreadPoolExecutor(max_workers=256, thread_name_prefix="atlasva-episode")


@dataclass
class RunSettings:
    """The ``atlasva`` section of verl's config (written by the launcher)."""

    model_path: str
    rollout: RolloutConfig
    layout: str = "concat"
    gamma_turn: float = 1.0  # the γ of the memory's shaping term (the estimator's turn discount)
    memory_dir: str = ""  # "" = memory off; else the SnapshotStore folder the trainer publishes to
    env_server_url: str = ""

    @classmethod
    def from_trainer_config(cls, config: Any) -> RunSettings:
        section = config.get("atlasva") if hasattr(config, "get") else None
        if section is None:
            raise ValueError("verl's config has no `atlasva` section: start runs with `atlasva train CONFIG engine=verl`")
        raw = dict(section)
        keys = {f.name for f in fields(RolloutConfig)}
        rollout = RolloutConfig(**{k: v for k, v in dict(raw["rollout"]).items() if k in keys})
        layout = str(raw.get("layout", "concat"))
        if layout not in LAYOUTS:
            raise ValueError(f"atlasva.layout={layout!r}; accepted: {', '.join(LAYOUTS)}")
        rollout.concat = layout == "concat"
        return cls(model_path=str(raw.get("model_path") or config.actor_rollout_ref.model.path), rollout=rollout,
                   layout=layout, gamma_turn=float(raw.get("gamma_turn", 1.0)),
                   memory_dir=str(raw.get("memory_dir") or ""), env_server_url=str(raw.get("env_server_url") or ""))


@functools.lru_cache(maxsize=4)
def _processor(model_path: str) -> tuple[PolicyProcessor, dict[str, Any]]:
    """atlasva's processor of the model folder (the ids the trainer sees) and the vLLM sampling parameters
    that keep generation to the ids a policy may emit."""
    processor = PolicyProcessor.from_pretrained(model_path)
    cfg = json.loads((Path(model_path) / "config.json").read_text())
    vocab = int((cfg.get("text_config") or cfg)["vocab_size"])
    return processor, vllm_token_mask(allowed_token_ids(processor, vocab), vocab)


class ServerPolicy:
    """The Policy face atlasva's AgentLoop sees, generating through verl's async server manager.

    Called from the episode's worker thread; each generation is scheduled on ``loop`` (verl's event
    loop) and awaited there. Generation uses verl's sampling parameters (temperature, top-p/k: training
    or validation), atlasva's per-turn token budget, the end-of-turn stop token, the same token mask as
    the local backends (``allowed_token_ids``: no vision or special tokens) and always asks for
    log-probs. One ``request_id`` per episode keeps its turns on one server (prefix cache).
    """

    token_level = True

    def __init__(self, server_manager: Any, processor: PolicyProcessor, sampling_params: dict[str, Any],
                 loop: asyncio.AbstractEventLoop, *, token_mask: dict[str, Any] | None = None,
                 request_id: str | None = None) -> None:
        self.server_manager = server_manager
        self.processor = processor
        self.sampling_params = dict(sampling_params)
        self.loop = loop
        self.token_mask = dict(token_mask or {})
        self.request_id = request_id or uuid4().hex
        temperature = float(self.sampling_params.get("temperature", 1.0))
        top_k = int(self.sampling_params.get("top_k", 0) or 0)
        self.config = PolicyConfig(sampling=SamplingConfig(
            temperature=temperature, top_p=float(self.sampling_params.get("top_p", 1.0)), top_k=max(top_k, 0)))
        self.model = None  # no local model: the weights live in verl's workers
        self.generate_s = 0.0

    def encode_prompt(self, messages: list[dict[str, Any]]) -> Encoded:
        return self.processor.encode_prompt(messages)

    def encode_user_turn(self, content: Any, *, close_assistant: bool = False) -> Encoded:
        return self.processor.encode_user_turn(content, close_assistant=close_assistant)

    def generate(self, prompts: Sequence[Encoded], *, seed: int | None = None, sampling: SamplingConfig | None = None,
                 request_ids: Sequence[Any] | None = None) -> list[GenerationOutput]:
        budget = int((sampling or self.config.sampling).max_new_tokens)
        t0 = time.perf_counter()
        outs = asyncio.run_coroutine_threadsafe(self._generate_all(list(prompts), budget), self.loop).result()
        self.generate_s += time.perf_counter() - t0
        return list(outs)

    async def _generate_all(self, prompts: list[Encoded], max_new_tokens: int) -> list[GenerationOutput]:
        return list(await asyncio.gather(*(self._generate(p, max_new_tokens) for p in prompts)))

    async def _generate(self, prompt: Encoded, max_new_tokens: int) -> GenerationOutput:
        if not isinstance(prompt, Encoded):
            raise TypeError(f"the verl agent loop generates from token ids (Encoded), got {type(prompt).__name__}")
        eos = self.processor.eos_token_id
        params = {**self.sampling_params, "max_tokens": int(max_new_tokens), "logprobs": True,
                  "stop_token_ids": [eos], **self.token_mask}
        images = [Image.fromarray(im) for im in prompt.images] or None
        out = await self.server_manager.generate(self.request_id, prompt_ids=list(prompt.input_ids),
                                                 sampling_params=params, image_data=images)
        ids = [int(t) for t in out.token_ids]
        logprobs = [float(x) for x in (out.log_probs or [])]
        finish = "stop" if ids and ids[-1] == eos else "length"
        text = self.processor.decode(ids[:-1] if finish == "stop" else ids)
        return GenerationOutput(token_ids=ids, text=text, logprobs=logprobs, finish_reason=finish)


def make_pool(settings: RunSettings) -> EnvPool:
    if settings.env_server_url:
        from atlasva.serve.client import HttpEnvPool

        return HttpEnvPool(settings.env_server_url)
    return InProcessEnvPool()


def run_episode(policy: Any, settings: RunSettings, env: str, seed: int, env_config: dict[str, Any],
                group_id: str, snapshot: Any) -> Any:
    """One episode with atlasva's AgentLoop (runs in a worker thread)."""
    pool = make_pool(settings)
    try:
        loop = AgentLoop(policy, pool, settings.rollout, gamma_turn=settings.gamma_turn)
        return loop.run([EpisodeRequest(env, int(seed), env_config, group_id=group_id)], snapshot,
                        sampling=policy.config.sampling)
    finally:
        pool.close()


@register("atlasva")
class AtlasvaAgentLoop(AgentLoopBase):
    """Returns one ``AgentLoopOutput`` (``atlasva.layout=concat``) or one per turn (``per_turn``)."""

    async def run(self, sampling_params: dict[str, Any], **row: Any) -> AgentLoopOutput | list[AgentLoopOutput]:
        settings = RunSettings.from_trainer_config(self.config)
        processor, token_mask = _processor(settings.model_path)
        loop = asyncio.get_running_loop()
        policy = ServerPolicy(self.server_manager, processor, sampling_params, loop, token_mask=token_mask)
        snapshot = store_at(settings.memory_dir).snapshot() if settings.memory_dir else None
        env_config = row["env_config"]
        env_config = json.loads(env_config) if isinstance(env_config, str) else dict(env_config)
        group = str(row.get("uid", row.get("index", "")))
        t0 = time.perf_counter()
        result = await loop.run_in_executor(
            _EPISODE_THREADS, run_episode, policy, settings, str(row["env"]), int(row["seed"]), env_config, group,
            snapshot,
        )
        wall = time.perf_counter() - t0
        key = f"{group}_{row.get('session_id', 0)}"
        metrics = AgentLoopMetrics(generate_sequences=policy.generate_s, tool_calls=max(wall - policy.generate_s, 0.0))
        outputs = [to_agent_loop_output(o, metrics) for o in verl_outputs(result, key)]
        return outputs[0] if settings.layout == "concat" else outputs


def to_agent_loop_output(fields_: dict[str, Any], metrics: AgentLoopMetrics) -> AgentLoopOutput:
    images = [Image.fromarray(im) for im in fields_["images"]]
    return AgentLoopOutput(
        prompt_ids=fields_["prompt_ids"], response_ids=fields_["response_ids"], response_mask=fields_["response_mask"],
        response_logprobs=fields_["response_logprobs"], multi_modal_data={"images": images} if images else {},
        reward_score=fields_["reward_score"], num_turns=fields_["num_turns"], metrics=metrics,
        extra_fields=fields_["extra_fields"],
    )
