"""How held out were the Meta-World figures measured before levels were hashed? Demos came from seeds 0–49 and
evaluation from seeds 100000–100049; this re-hashes both sets' initial placements with the level hash the
pipeline now uses and counts distinct levels and evaluation episodes that replay a training level.

    MUJOCO_GL=osmesa .venv/bin/python benchmarks/vla_old_split_check.py   # ~1 min
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "osmesa")


def main() -> int:
    from atlasva.vla.sim import _metaworld_env, _reset_metaworld, metaworld_level_hash

    for task in ("reach-v3", "drawer-open-v3"):
        env = _metaworld_env(task, 1)
        train = {metaworld_level_hash(task, _reset_metaworld(env, s)) for s in range(0, 50)}
        evals = [metaworld_level_hash(task, _reset_metaworld(env, s)) for s in range(100000, 100050)]
        env.close()
        print(f"{task}: training demos {len(train)} distinct levels; evaluation {len(set(evals))} distinct levels, "
              f"{sum(h in train for h in evals)} of {len(evals)} episodes on a training level")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
