"""SFT warm start from solver demonstrations.

Each demonstration turn is (the prompt the agent loop would build — system prompt, memory injection,
observation — and the solver's actions written as a well-formed answer in the chosen format). In
grounding / world-modeling formats the ``<observation>`` and ``<prediction>`` hold the env's true
relations before and after the turn, so the model learns to state them."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from atlasva import formats
from atlasva.envs.registry import make
from atlasva.memory import episode_meta
from atlasva.policy.processor import content_from_obs
from atlasva.rl import all_finite


@dataclass
class Demo:
    encoded: Any  # prompt + answer ids
    loss_mask: list[int]


def build_demos(policy: Any, env_name: str, env_config: dict[str, Any], seeds: list[int], *, max_turns: int,
                snapshot: Any = None, concat: bool = True, window: int = 0) -> list[Demo]:
    """Solver demonstrations laid out exactly as the agent loop lays out rollouts.

    ``concat``: one demo per episode — the first prompt, each answer, the next user turn, … (loss on the
    answers); otherwise one demo per turn with the last ``window`` turns as history. A model trained on
    one layout and rolled out in the other sees contexts it never saw (measured: once the tiny policy
    could see, single-turn SFT broke its format on second turns of concatenated rollouts)."""
    from atlasva.rollout.loop import turn_messages

    env = make(env_name, **env_config)
    proc = policy.processor
    system = env.system_prompt()
    demos: list[Demo] = []
    for seed in seeds:
        obs, info = env.reset(seed=seed)
        meta = episode_meta(env_name, info["level_hash"], info.get("heuristics", {}), info["cells"][0], seed)
        history: list[tuple[str, list[Any], str]] = []
        seq: Any = None
        mask: list[int] = []
        for turn in range(max_turns):
            acts = env.turn_plan()
            if not acts:
                break
            after = copy.deepcopy(env)  # the state after the turn, for <prediction>
            after.step(formats.answer(acts, "no_think", action_sep=env.action_sep))
            text = formats.answer(
                acts,
                env.format,
                action_sep=env.action_sep,
                observation=formats.describe(env.relations(env.state())),
                prediction=formats.describe(after.relations(after.state())),
            )
            shown_text, shown_images = snapshot.inject(meta, obs, turn) if snapshot is not None else (obs["text"], obs["images"])
            shown_images = list(shown_images)
            answer_ids = proc.encode_text(text).input_ids + [proc.eos_token_id]
            if concat:
                if seq is None:
                    seq = policy.encode_prompt(
                        [{"role": "system", "content": system}, {"role": "user", "content": content_from_obs(shown_text, shown_images)}]
                    )
                else:
                    seq = seq + policy.encode_user_turn(content_from_obs(shown_text, shown_images))
                mask += [0] * (len(seq) - len(mask))
                seq = seq + answer_ids
                mask += [1] * len(answer_ids)
            else:
                prompt = policy.encode_prompt(turn_messages(system, history, shown_text, shown_images, window))
                demos.append(Demo(prompt + answer_ids, [0] * len(prompt) + [1] * len(answer_ids)))
            history.append((shown_text, shown_images, text))
            obs, _, terminated, truncated, info = env.step(text)
            meta["cell"] = info["cells"][-1]
            if terminated or truncated:
                break
        if concat and seq is not None:
            demos.append(Demo(seq, mask))
    env.close()
    return demos


def train_sft(policy: Any, demos: list[Demo], *, epochs: int, lr: float, batch_size: int, seed: int,
              log: Any = None) -> dict[str, float]:
    """Cross-entropy on answer tokens (loss mask 1); returns the last epoch's mean loss."""
    model = policy.model
    params = model.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=lr)
    rng = np.random.default_rng(seed)
    model.train()
    last = float("nan")
    total_steps = epochs * ((len(demos) + batch_size - 1) // batch_size)
    bar = tqdm(total=total_steps, desc="sft", unit="batch", leave=False, disable=None)
    step = 0
    for epoch in range(epochs):
        order = rng.permutation(len(demos))
        losses = []
        for start in range(0, len(order), batch_size):
            batch = [demos[i] for i in order[start : start + batch_size]]
            width = max(len(d.loss_mask) for d in batch)
            mask = torch.zeros(len(batch), width)
            for r, d in enumerate(batch):
                mask[r, : len(d.loss_mask)] = torch.tensor(d.loss_mask, dtype=torch.float32)
            scores = model.score([d.encoded for d in batch], positions=mask.bool())
            loss = -(scores.logprobs * mask).sum() / mask.sum().clamp(min=1)
            opt.zero_grad(set_to_none=True)
            if not all_finite(loss):
                bar.update(1)
                continue  # a non-finite loss skips the step instead of poisoning the weights
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(loss.item())
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
            if log is not None:
                log(step, {"sft/loss": losses[-1], "sft/epoch": epoch})
        last = float(np.mean(losses)) if losses else float("nan")
    bar.close()
    model.eval()
    return {"sft/final_loss": last, "sft/demos": float(len(demos))}
