"""The demo's blind reference line: every fixed 6-move plan (3 Down, 3 Right) replayed on the demo's held-out
FrozenLake levels, without looking at the board. A policy that beats the best plan reads the board.

Each plan is a scripted agent run through the agent loop (``rollout.scripted`` + ``evaluate_policy``), like the
baselines: the same levels, env config, rewards and success check as the demo's evaluation.

    .venv/bin/python benchmarks/fixed_plan.py [--episodes 200]
"""

from __future__ import annotations

import argparse
import itertools


def main(argv: list[str] | None = None) -> int:
    from atlasva import formats
    from atlasva.envs.registry import load_spec
    from atlasva.eval.evaluate import evaluate_policy
    from atlasva.rollout.scripted import scripted_policy
    from atlasva.train import TrainConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--episodes", type=int, default=200)
    args = ap.parse_args(argv)
    cfg = TrainConfig()  # the demo's env config, rollout and held-out split
    spec = load_spec(cfg.env.spec)
    env_config = spec.final_config(cfg.env.config)
    seeds = spec.seeds(cfg.eval.split, args.episodes, overrides=cfg.env.config, distinct=cfg.eval.distinct_levels)
    per_turn = int(env_config["max_actions_per_turn"])
    scores = []
    for plan in sorted(set(itertools.permutations("DDDRRR"))):
        moves = ["Down" if c == "D" else "Right" for c in plan]
        answers = [formats.answer(moves[i:i + per_turn], env_config["format"]) for i in range(0, len(moves), per_turn)]
        _, summary = evaluate_policy(scripted_policy({s: answers for s in seeds}), spec.env, seeds,
                                     env_config=env_config, rollout=cfg.rollout, desc="".join(plan))
        scores.append((summary["success_rate"], "".join(plan), summary["distinct_levels"]))
    for rate, plan, levels in sorted(scores, reverse=True)[:5]:
        print(f"{plan}: {rate:.3f} on {levels} distinct held-out levels")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
