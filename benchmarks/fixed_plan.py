"""The demo's blind reference line: every fixed 6-move plan (3 Down, 3 Right) replayed on the demo's held-out
FrozenLake levels, without looking at the board. A policy that beats the best plan reads the board.

    .venv/bin/python benchmarks/fixed_plan.py [--episodes 200]
"""

from __future__ import annotations

import argparse
import itertools


def main(argv: list[str] | None = None) -> int:
    from atlasva import formats
    from atlasva.envs.registry import load_spec
    from atlasva.train import TrainConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--episodes", type=int, default=200)
    args = ap.parse_args(argv)
    cfg = TrainConfig()  # the demo's env config and held-out split
    spec = load_spec(cfg.env.spec)
    seeds = spec.seeds(cfg.eval.split, args.episodes, overrides=cfg.env.config, distinct=cfg.eval.distinct_levels)
    env = spec.make(**cfg.env.config)
    per_turn = env.max_actions_per_turn
    scores = []
    for plan in sorted(set(itertools.permutations("DDDRRR"))):
        moves = ["Down" if c == "D" else "Right" for c in plan]
        wins = 0
        for seed in seeds:
            env.reset(seed=seed)
            for start in range(0, len(moves), per_turn):
                _, _, terminated, truncated, _ = env.step(formats.answer(moves[start:start + per_turn], "no_think"))
                if terminated or truncated:
                    break
            wins += int(env.is_success())
        scores.append((wins / len(seeds), "".join(plan)))
    for rate, plan in sorted(scores, reverse=True)[:5]:
        print(f"{plan}: {rate:.3f}")
    print(f"on {len(seeds)} distinct held-out levels")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
