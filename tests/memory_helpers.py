"""Hand-built Episode records on small grids for the memory tests (no env needed)."""

from __future__ import annotations

from typing import Any

import numpy as np

from atlasva.rollout.episode import Episode, Turn

MOVES = {(0, -1): "Left", (1, 0): "Down", (0, 1): "Right", (-1, 0): "Up", (0, 0): "Up"}


def heuristics_3x3(hole: tuple[int, int] | None = (1, 1), goal: tuple[int, int] = (2, 2)) -> dict[str, Any]:
    """A 3×3 lake: BFS goal distance avoiding the hole."""
    from collections import deque

    dist = [[-1] * 3 for _ in range(3)]
    dist[goal[0]][goal[1]] = 0
    q = deque([goal])
    while q:
        r, c = q.popleft()
        for dr, dc in ((0, 1), (1, 0), (0, -1), (-1, 0)):
            nr, nc = r + dr, c + dc
            if 0 <= nr < 3 and 0 <= nc < 3 and dist[nr][nc] < 0 and (nr, nc) != hole:
                dist[nr][nc] = dist[r][c] + 1
                q.append((nr, nc))
    return {
        "shape": [3, 3],
        "hazard": [list(hole)] if hole else [],
        "goals": [list(goal)],
        "goal_distance": dist,
    }


def frame(cell: tuple[int, int], size: int = 3, tile: int = 8) -> np.ndarray:
    """A frame with a bright agent tile at ``cell``."""
    img = np.full((size * tile, size * tile, 3), 40, dtype=np.uint8)
    r, c = cell
    img[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] = (250, 80, 40)
    return img


def episode(
    cells: list[tuple[int, int]],
    outcome: str,
    *,
    level: str = "L1",
    env: str = "toy",
    heuristics: dict[str, Any] | None = None,
    group_id: str = "",
    per_turn: int = 1,
    failure_kind: str | None = None,
    frames: bool = True,
) -> Episode:
    """An episode walking through ``cells`` (start first), ``per_turn`` primitive moves per turn."""
    ep = Episode(env_name=env, seed=0, level_hash=level, group_id=group_id, start_cell=list(cells[0]),
                 heuristics=heuristics if heuristics is not None else heuristics_3x3())
    i = 0
    while i < len(cells) - 1:
        seg = cells[i : i + per_turn + 1]
        actions = [MOVES[(b[0] - a[0], b[1] - a[1])] for a, b in zip(seg, seg[1:])]
        last = i + per_turn >= len(cells) - 1
        ep.turns.append(Turn(
            prompt_text="<image>", actions=actions, cells=[list(c) for c in seg],
            metrics={"format_valid": True, "action_valid": True, "action_effective": True,
                     "success": last and outcome == "success"},
            terminated=last and outcome in ("success", "failure"),
            truncated=last and outcome == "truncated",
            frames=[frame(seg[0])] if frames else [],
        ))
        i += per_turn
    ep.finish(outcome, failure_kind if failure_kind else ("hole" if outcome == "failure" else None))
    return ep


def play(env: Any, turns: list[list[str]], *, seed: int | None = None, level: list[str] | None = None,
         group_id: str = "", frames: bool = False) -> Episode:
    """Play ``turns`` (actions per turn) on a real env into an Episode record, the env's events attached
    to the turns (as the agent loop records them); stops when the episode ends."""
    from atlasva import formats

    obs, info = env.reset(seed=seed, options={"level": level} if level is not None else None)
    ep = Episode(env_name=env.env_name, seed=seed, level_hash=info["level_hash"], group_id=group_id,
                 start_state=info["state"], start_cell=info["cells"][0], heuristics=info["heuristics"])
    term = trunc = False
    for actions in turns:
        shown = list(obs["images"]) if frames else []
        obs, _, term, trunc, info = env.step(formats.answer(actions, env.format, action_sep=env.action_sep))
        turn = Turn(prompt_text="", actions=info["actions"], cells=info["cells"], metrics=info["metrics"],
                    state=info["state"], terminated=term, truncated=trunc, events=info["events"], frames=shown)
        ep.turns.append(turn)
        if term or trunc:
            break
    ep.finish("success" if info["metrics"]["success"] else ("failure" if term else "truncated"), info.get("failure"))
    return ep
