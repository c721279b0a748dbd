"""Evaluate a policy on held-out levels with the agent loop: per-episode records and a stage summary
in the run folder's schema (success rate with a 95% Wilson interval, mean turns, format-valid rate,
mean reward, finish reasons)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from tqdm import tqdm

from atlasva.envs.pool import EnvPool, InProcessEnvPool
from atlasva.rollout.episode import Episode
from atlasva.rollout.loop import AgentLoop, EpisodeRequest, RolloutConfig
from atlasva.runs import summarize_episodes


def evaluate_policy(
    policy: Any,
    env: str,
    seeds: list[int],
    *,
    env_config: dict[str, Any] | None = None,
    rollout: RolloutConfig | None = None,
    snapshot: Any = None,
    batch_size: int = 64,
    temperature: float = 0.0,
    pool: EnvPool | None = None,
    desc: str = "eval",
) -> tuple[list[Episode], dict[str, Any]]:
    """Run one episode per seed (greedy by default) and summarise."""
    own_pool = pool is None
    pool = pool or InProcessEnvPool()
    loop = AgentLoop(policy, pool, rollout or RolloutConfig())
    sampling = replace(policy.config.sampling, temperature=float(temperature))
    episodes: list[Episode] = []
    bar = tqdm(total=len(seeds), desc=desc, unit="ep", leave=False, disable=None)
    try:
        for start in range(0, len(seeds), batch_size):
            chunk = seeds[start : start + batch_size]
            reqs = [EpisodeRequest(env, s, dict(env_config or {}), group_id=f"eval-{s}") for s in chunk]
            res = loop.run(reqs, snapshot, seed=start, sampling=sampling)
            episodes.extend(res.episodes)
            bar.update(len(chunk))
            bar.set_postfix(success=f"{sum(e.success for e in episodes) / len(episodes):.2f}", refresh=False)
    finally:
        bar.close()
        if own_pool:
            pool.close()
    return episodes, summarize_episodes([e.summary_record() for e in episodes])
