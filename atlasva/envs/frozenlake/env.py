"""FrozenLake with seeded random maps of any size, a guaranteed path, optional seeded slipperiness,
tile-blitted vision rendering, and rule-based world-model relations."""

from __future__ import annotations

from collections import deque
from functools import lru_cache
from typing import Any

import numpy as np

from atlasva import formats
from atlasva.envs.base import AtlasEnv, NoSolverError

FROZEN, HOLE, GOAL = 0, 1, 2
SYMBOLS = {"_": FROZEN, "O": HOLE, "G": GOAL}
MOVES = {"Left": (0, -1), "Down": (1, 0), "Right": (0, 1), "Up": (-1, 0)}
# a slip moves perpendicular to the intended direction
PERPENDICULAR = {"Left": ("Up", "Down"), "Right": ("Up", "Down"), "Up": ("Left", "Right"), "Down": ("Left", "Right")}
MAX_MAP_TRIES = 2000


def _bfs(grid: np.ndarray, start: tuple[int, int]) -> np.ndarray:
    """Steps from ``start`` to every cell without entering holes (-1 = unreachable)."""
    h, w = grid.shape
    dist = np.full((h, w), -1, dtype=np.int64)
    dist[start] = 0
    queue = deque([start])
    while queue:
        r, c = queue.popleft()
        for dr, dc in MOVES.values():
            nr, nc = r + dr, c + dc
            if 0 <= nr < h and 0 <= nc < w and dist[nr, nc] < 0 and grid[nr, nc] != HOLE:
                dist[nr, nc] = dist[r, c] + 1
                queue.append((nr, nc))
    return dist


def generate_map(size: int, p: float, seed: int, random_start_goal: bool = True) -> tuple[np.ndarray, tuple[int, int]]:
    """A size×size map (FROZEN/HOLE/GOAL codes) and a start cell with a hole-free path to the goal."""
    if size < 2:
        raise ValueError(f"size must be >= 2, got {size}")
    if not 0.0 < p <= 1.0:
        raise ValueError(f"p (probability of a frozen tile) must be in (0, 1], got {p}")
    rng = np.random.default_rng(seed)
    for _ in range(MAX_MAP_TRIES):
        grid = np.where(rng.random((size, size)) < p, FROZEN, HOLE)
        if random_start_goal:
            a, b = rng.choice(size * size, size=2, replace=False)
            start, goal = divmod(int(a), size), divmod(int(b), size)
        else:
            start, goal = (0, 0), (size - 1, size - 1)
        grid[start] = FROZEN
        grid[goal] = GOAL
        if _bfs(grid, start)[goal] > 0:
            return grid, start
    raise RuntimeError(
        f"no {size}x{size} FrozenLake map with a path found in {MAX_MAP_TRIES} tries at p={p}; raise p (frozen share)"
    )


# --------------------------------------------------------------------------- rendering

_TILE_FROZEN, _TILE_HOLE, _TILE_GOAL, _TILE_PLAYER, _TILE_PLAYER_HOLE, _TILE_PLAYER_GOAL = range(6)


@lru_cache(maxsize=8)
def _tiles(t: int) -> np.ndarray:
    """The six tile images (6, t, t, 3), drawn once per tile size."""
    yy, xx = np.mgrid[0:t, 0:t].astype(np.float32) + 0.5
    cy = cx = t / 2
    ice = np.empty((t, t, 3), np.float32)
    ice[:] = (200, 228, 245)
    ice[(xx + yy) % max(4, t // 3) < 1.0] = (225, 242, 252)  # diagonal glints
    ice[[0, -1], :] = ice[:, [0, -1]] = (150, 190, 215)  # grid lines
    hole = ice.copy()
    ell = ((xx - cx) / (0.42 * t)) ** 2 + ((yy - cy) / (0.34 * t)) ** 2 <= 1
    hole[ell] = (25, 45, 80)
    hole[ell & ((yy - cy) < -0.15 * t)] = (45, 70, 110)
    goal = ice.copy()
    pole = (np.abs(xx - 0.32 * t) < max(1, t / 20)) & (yy > 0.15 * t) & (yy < 0.88 * t)
    flag = (xx > 0.32 * t) & (xx < 0.78 * t) & (yy > 0.15 * t) & (yy < 0.15 * t + 0.3 * t) & (
        (xx - 0.32 * t) < (0.46 * t) * (1 - np.abs(yy - 0.3 * t) / (0.15 * t) * 0.5)
    )
    goal[pole] = (90, 60, 30)
    goal[flag] = (40, 170, 60)

    def with_player(base: np.ndarray) -> np.ndarray:
        img = base.copy()
        body = ((xx - cx) / (0.22 * t)) ** 2 + ((yy - 0.62 * t) / (0.26 * t)) ** 2 <= 1
        head = (xx - cx) ** 2 + (yy - 0.28 * t) ** 2 <= (0.14 * t) ** 2
        img[body] = (220, 60, 40)
        img[head] = (245, 200, 160)
        return img

    tiles = [ice, hole, goal, with_player(ice), with_player(hole), with_player(goal)]
    return np.stack(tiles).round().astype(np.uint8)


def blit(codes: np.ndarray, tiles: np.ndarray) -> np.ndarray:
    """Assemble an image from an H×W array of tile codes: one fancy-index, no per-cell loop."""
    h, w = codes.shape
    t = tiles.shape[1]
    return np.ascontiguousarray(tiles[codes].transpose(0, 2, 1, 3, 4).reshape(h * t, w * t, 3))


# --------------------------------------------------------------------------- env


class FrozenLakeEnv(AtlasEnv):
    env_name = "frozenlake"
    action_sep = ","
    action_names = ("Left", "Down", "Right", "Up")
    relation_vocabulary = formats.Vocabulary.of(
        ("goal", "hole"), ("above", "below", "same row as", "left of", "right of", "same column as"), ("player",)
    )
    #: size: cells per side; tile_size: pixels per cell (frames also obey image_pixels)
    limits = {**AtlasEnv.limits, "size": 32, "tile_size": 64, "options.level": 32}

    def __init__(
        self,
        *,
        size: int = 4,
        p: float = 0.8,
        random_start_goal: bool = True,
        slip_prob: float = 0.0,
        success_reward: float = 1.0,
        step_penalty: float = 0.0,
        tile_size: int = 28,
        max_actions_per_turn: int = 5,
        format_reward: float = 0.02,
        **kwargs: Any,
    ) -> None:
        super().__init__(max_actions_per_turn=max_actions_per_turn, format_reward=format_reward, **kwargs)
        if int(size) < 2:
            raise ValueError(f"size must be >= 2, got {size}")
        if not 0.0 <= float(slip_prob) < 1.0:
            raise ValueError(f"slip_prob must be in [0, 1), got {slip_prob}")
        if int(tile_size) < 4:
            raise ValueError(f"tile_size must be >= 4 pixels, got {tile_size}")
        self.check_limit("size", size, "cells per side")
        self.check_limit("tile_size", tile_size, "pixels")
        self.size, self.p, self.random_start_goal = int(size), float(p), bool(random_start_goal)
        self.slip_prob, self.success_reward, self.step_penalty = float(slip_prob), float(success_reward), float(step_penalty)
        self.tile_size = int(tile_size)
        self.grid_shape = (self.size, self.size)
        self.image_shape = (self.size * self.tile_size, self.size * self.tile_size, 3)
        self._tiles = _tiles(self.tile_size)
        self._build_spaces()

    # ------------------------------------------------------------------ levels
    def _set(self, grid: np.ndarray, start: tuple[int, int], seed: int) -> None:
        self.grid = grid
        self.start = (int(start[0]), int(start[1]))
        self.pos = self.start
        self.goal = tuple(int(x) for x in np.argwhere(grid == GOAL)[0])
        self._slip_rng = np.random.default_rng([seed, 0x51195])  # own RNG: transitions are reproducible
        self._goal_dist: np.ndarray | None = None

    def _generate(self, seed: int) -> None:
        grid, start = generate_map(self.size, self.p, seed, self.random_start_goal)
        self._set(grid, start, seed)

    def _load_level(self, rows: list[str]) -> None:
        if not rows or any(len(r) != len(rows[0]) for r in rows):
            raise ValueError("a FrozenLake level needs non-empty rows of equal length")
        if len(rows) != self.size or len(rows[0]) != self.size:
            raise ValueError(f"level is {len(rows)}x{len(rows[0])} but this env has size={self.size}")
        grid = np.zeros((self.size, self.size), dtype=np.int64)
        start = None
        for r, row in enumerate(rows):
            for c, ch in enumerate(row):
                if ch == "P":
                    start = (r, c)
                elif ch in SYMBOLS:
                    grid[r, c] = SYMBOLS[ch]
                else:
                    raise ValueError(f"unknown FrozenLake symbol {ch!r} at row {r}, col {c}; accepted: P _ O G")
        if start is None or (grid == GOAL).sum() != 1:
            raise ValueError("a FrozenLake level needs exactly one player 'P' and one goal 'G'")
        self._set(grid, start, 0)

    def level_rows(self) -> list[str]:
        inv = {v: k for k, v in SYMBOLS.items()}
        rows = [[inv[int(x)] for x in row] for row in self.grid]
        rows[self.start[0]][self.start[1]] = "P"
        return ["".join(r) for r in rows]

    # ------------------------------------------------------------------ dynamics
    def _canonical_action(self, token: str) -> str | None:
        key = token.strip().strip("'\"").capitalize()
        return key if key in MOVES else None

    def _execute(self, action: str) -> tuple[bool, float, bool]:
        if self.slip_prob > 0 and self._slip_rng.random() < self.slip_prob:
            action = PERPENDICULAR[action][int(self._slip_rng.integers(2))]
        dr, dc = MOVES[action]
        r, c = self.pos[0] + dr, self.pos[1] + dc
        if not (0 <= r < self.size and 0 <= c < self.size):
            return False, -self.step_penalty, False  # walking off the lake: no effect
        self.pos = (r, c)
        tile = self.grid[r, c]
        if tile == GOAL:
            return True, self.success_reward - self.step_penalty, True
        return True, -self.step_penalty, bool(tile == HOLE)

    def is_success(self) -> bool:
        return bool(self.grid[self.pos] == GOAL)

    def failure(self) -> str | None:
        return "hole" if self.grid[self.pos] == HOLE else None

    def cell(self) -> list[int]:
        return [int(self.pos[0]), int(self.pos[1])]

    def state(self) -> dict[str, Any]:
        holes = np.argwhere(self.grid == HOLE).tolist()
        return {
            "player": self.cell(),
            "goal": [int(self.goal[0]), int(self.goal[1])],
            "holes": holes,
            "shape": [self.size, self.size],
            "in_hole": bool(self.grid[self.pos] == HOLE),
        }

    def relations(self, state: dict[str, Any]) -> list[list[str]]:
        pr, pc = state["player"]

        def rel(name: str, r: int, c: int) -> list[list[str]]:
            v = "above" if r < pr else "below" if r > pr else "same row as"
            h = "left of" if c < pc else "right of" if c > pc else "same column as"
            return [[name, v, "player"], [name, h, "player"]]

        out = rel("goal", *state["goal"])
        for r, c in state["holes"]:
            if abs(r - pr) + abs(c - pc) == 1:
                out += rel("hole", r, c)
        return out

    # ------------------------------------------------------------------ rendering
    def _codes(self) -> np.ndarray:
        codes = self.grid.copy()  # FROZEN/HOLE/GOAL are tile indices 0/1/2
        codes[self.pos] += _TILE_PLAYER
        return codes

    def render_rgb(self) -> np.ndarray:
        return blit(self._codes(), self._tiles)

    def render_text(self) -> str:
        chars = np.array(["_", "O", "G", "P", "X", "√"])
        return "\n".join("".join(row) for row in chars[self._codes()])

    def task_text(self) -> str:
        return "You are on a frozen lake. Reach the goal without falling into a hole."

    def rules_text(self) -> str:
        slip = (
            f" The ice is slippery: a move goes sideways with probability {self.slip_prob:g}."
            if self.slip_prob
            else ""
        )
        legend = " In text, P is you, _ is ice, O is a hole, G is the goal, X is you in a hole, √ is you on the goal."
        return (
            "You are a FrozenLake solver. Move on the grid to reach the goal (flag) without stepping into a hole "
            "(dark circle). Moving off the edge does nothing." + slip + (legend if self.obs_mode != "vision" else "")
        )

    # ------------------------------------------------------------------ knowledge
    def grid_heuristics(self) -> dict[str, Any]:
        if self._goal_dist is None:
            self._goal_dist = _bfs(self.grid, self.goal)
            self._goal_dist[self.grid == HOLE] = -1
        return {
            "shape": [self.size, self.size],
            "hazard": np.argwhere(self.grid == HOLE).tolist(),
            "goals": [[int(self.goal[0]), int(self.goal[1])]],
            "goal_distance": self._goal_dist.tolist(),
        }

    def solve(self) -> list[str]:
        """Shortest hole-free path from the current cell (deterministic lake only)."""
        if self.slip_prob > 0:
            raise NoSolverError("the lake is slippery: use optimal_action() (value iteration)")
        if self.grid[self.pos] == HOLE or self.is_success():
            return []
        dist = np.asarray(self.grid_heuristics()["goal_distance"])
        plan, (r, c) = [], self.pos
        while dist[r, c] > 0:
            for name, (dr, dc) in MOVES.items():
                nr, nc = r + dr, c + dc
                if 0 <= nr < self.size and 0 <= nc < self.size and dist[nr, nc] == dist[r, c] - 1:
                    plan.append(name)
                    r, c = nr, nc
                    break
        return plan

    def optimal_action(self) -> str:
        if self.slip_prob == 0:
            return super().optimal_action()
        return self.action_names[int(np.argmax(self._q_values()[self.pos]))]

    def _q_values(self, gamma: float = 0.99, iters: int = 500) -> np.ndarray:
        """Q(s, a) of reaching the goal on the slippery lake, by value iteration (H×W×4)."""
        n = self.size
        v = np.zeros((n, n))
        q = np.zeros((n, n, 4))
        terminal = self.grid != FROZEN
        for _ in range(iters):
            for ai, a in enumerate(self.action_names):
                outcomes = [(1 - self.slip_prob, a)] + [(self.slip_prob / 2, b) for b in PERPENDICULAR[a]]
                total = np.zeros((n, n))
                for prob, b in outcomes:
                    dr, dc = MOVES[b]
                    rr = np.clip(np.arange(n)[:, None] + dr + 0 * np.arange(n)[None, :], 0, n - 1)
                    cc = np.clip(np.arange(n)[None, :] + dc + 0 * np.arange(n)[:, None], 0, n - 1)
                    reward = (self.grid[rr, cc] == GOAL).astype(float)
                    total += prob * (reward + gamma * np.where(terminal[rr, cc], 0.0, v[rr, cc]))
                q[:, :, ai] = total
            new_v = np.where(terminal, 0.0, q.max(axis=2))
            if np.abs(new_v - v).max() < 1e-9:
                v = new_v
                break
            v = new_v
        return q
