"""Scripted agents that run through the agent loop: solver demonstrations (SFT) and baselines.

A script is the list of answers an agent gives on one level, turn by turn. :class:`ScriptedBackend`
replays scripts through :class:`~atlasva.rollout.loop.AgentLoop` (the loop tells it each prompt's level
seed and turn), so demonstrations and baselines are recorded by the very loop that trains and evaluates:
the same prompts, memory injection, token layout, rewards and finish reasons.

The solver's script is planned on a private copy of the env (a seed fully determines a level and its
transitions, slippery ones included), then replayed: the same texts on the same seed reach the same
states in the loop's pool.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from atlasva import formats
from atlasva.envs.base import AtlasEnv
from atlasva.policy.backends import GenerationOutput


def solver_script(env: AtlasEnv, seed: int, max_turns: int) -> list[str]:
    """The optimal answers from each state of the level on ``seed``, one per turn, written in the env's
    format; in grounding / world-modeling formats ``<observation>`` and ``<prediction>`` state the true
    relations before and after the turn."""
    env.reset(seed=seed)
    script: list[str] = []
    for _ in range(max_turns):
        plan = env.turn_plan()
        if not plan:
            break
        after = copy.deepcopy(env)  # the state after the turn, for <prediction>
        after.step(formats.answer(plan, "no_think", action_sep=env.action_sep))
        text = formats.answer(
            plan, env.format, action_sep=env.action_sep,
            observation=formats.describe(env.relations(env.state())),
            prediction=formats.describe(after.relations(after.state())),
        )
        script.append(text)
        _, _, terminated, truncated, _ = env.step(text)
        if terminated or truncated:
            break
    return script


def random_script(env: AtlasEnv, rng: np.random.Generator, max_turns: int) -> list[str]:
    """Well-formed answers of 1..max_actions_per_turn uniformly random legal action names per turn."""
    if not env.action_names:
        raise ValueError(f"{env.env_name} has no discrete action names; the random agent cannot act")
    script = []
    for _ in range(max_turns):
        k = int(rng.integers(1, env.max_actions_per_turn + 1))
        acts = [env.action_names[int(i)] for i in rng.integers(0, len(env.action_names), size=k)]
        script.append(formats.answer(acts, env.format, action_sep=env.action_sep))
    return script


class ScriptedBackend:
    """A generation backend that answers turn ``t`` on level seed ``s`` with ``scripts[s][t]``.

    With a ``processor`` (token mode, e.g. SFT) answers are tokenised and end with the end-of-turn token,
    cut at ``sampling.max_new_tokens`` like any generation; their log-prob is 0 (the script is certain).
    Without one (chat mode, e.g. baselines) only the text is returned."""

    def __init__(self, scripts: Mapping[int, Sequence[str]], processor: Any = None) -> None:
        self.scripts = {int(k): list(v) for k, v in scripts.items()}
        self.processor = processor

    def generate(self, prompts: Sequence[Any], *, seed: int | None = None, sampling: Any = None,
                 request_ids: Sequence[Any] | None = None) -> list[GenerationOutput]:
        if request_ids is None or len(request_ids) != len(prompts):
            raise ValueError("ScriptedBackend needs one request id (slot, seed, turn) per prompt; "
                             "run it through atlasva.rollout.AgentLoop, which passes them")
        return [self._answer(key, sampling) for key in request_ids]

    def _answer(self, key: Any, sampling: Any) -> GenerationOutput:
        script = self.scripts.get(int(key.seed))
        if script is None:
            raise KeyError(f"no script for level seed {key.seed}; scripts cover seeds {sorted(self.scripts)[:8]}…")
        if key.turn >= len(script):
            raise RuntimeError(
                f"the script for seed {key.seed} has {len(script)} answer(s) but the loop asked for turn {key.turn}: "
                "the replay left the scripted trajectory (is the env deterministic given its seed?)"
            )
        text = script[key.turn]
        if self.processor is None:
            return GenerationOutput(token_ids=[], text=text)
        ids = self.processor.encode_text(text).input_ids + [self.processor.eos_token_id]
        limit = int(sampling.max_new_tokens) if sampling is not None else len(ids)
        if len(ids) > limit:
            ids = ids[:limit]
            return GenerationOutput(token_ids=ids, text=self.processor.decode(ids), logprobs=[0.0] * len(ids),
                                    finish_reason="length")
        return GenerationOutput(token_ids=ids, text=text, logprobs=[0.0] * len(ids), finish_reason="stop")


def scripted_policy(scripts: Mapping[int, Sequence[str]], model: Any = None) -> Any:
    """A :class:`~atlasva.policy.Policy` replaying ``scripts``: token mode over ``model``'s processor when
    given (for SFT), chat mode otherwise."""
    from atlasva.policy import Policy

    return Policy(ScriptedBackend(scripts, model.processor if model is not None else None), model=model)
