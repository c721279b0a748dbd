"""The Sokoban environment (DESIGN §3): seeded solvable levels, text actions, tile-blitted frames."""

from __future__ import annotations

from collections import deque
from typing import Any, ClassVar

import numpy as np

from atlasva import formats
from atlasva.envs.base import AtlasEnv
from atlasva.envs.sokoban import render
from atlasva.envs.sokoban.generator import DEFAULT_MAX_TRIES, check_config, generate_level
from atlasva.envs.sokoban.level import SYMBOL_LEGEND, SYMBOLS, Level, parse_rows, render_rows
from atlasva.envs.sokoban.solver import ACTIONS, OPPOSITE, Board, board_of, simple_deadlock_cells, solve_state

_ACTION_INDEX = {a.lower(): i for i, a in enumerate(ACTIONS)}


class SokobanEnv(AtlasEnv):
    """Push every box onto a target. Defaults follow VAGEN: a 6×6 room with one box, up to three
    actions per turn, format reward 0.1, success reward 1.0.

    Levels come from :func:`generate_level` (``reset(seed=…)``) or are given in text symbols
    (``reset(options={"level": rows})``). A given level of another size than ``dim_room`` changes
    ``grid_shape``, ``image_shape`` and the observation space for that episode.
    The episode terminates only on success; a box stuck on a dead square is reported by
    :meth:`failure` (``"deadlock"``) but play goes on until the turn limit.
    """

    env_name: ClassVar[str] = "sokoban"
    action_sep: ClassVar[str] = ","
    action_names: ClassVar[tuple[str, ...]] = ACTIONS
    relation_vocabulary: ClassVar[formats.Vocabulary] = formats.Vocabulary.of(
        ("box", "target"),
        ("above", "below", "same row as", "left of", "right of", "same column as"),
        ("player",),
    )
    #: dim_room / options.level: cells per side; tile_size: pixels per cell (frames also obey image_pixels);
    #: max_gen_tries × a bounded search each is the worst-case generation time
    limits: ClassVar[dict[str, int]] = {
        **AtlasEnv.limits, "dim_room": 16, "num_boxes": 6, "tile_size": 64, "max_gen_tries": 1000,
        "num_gen_steps": 10_000, "options.level": 32,
    }

    def __init__(
        self,
        *,
        dim_room: tuple[int, int] | list[int] = (6, 6),
        num_boxes: int = 1,
        min_solution_length: int = 1,
        max_solution_length: int | None = None,
        num_gen_steps: int | None = None,
        max_gen_tries: int = DEFAULT_MAX_TRIES,
        tile_size: int = render.DEFAULT_TILE,
        success_reward: float = 1.0,
        step_penalty: float = 0.0,
        max_actions_per_turn: int = 3,
        format_reward: float = 0.1,
        **kwargs: Any,  # the base env's options: obs_mode, format, format_penalty, ...
    ) -> None:
        super().__init__(max_actions_per_turn=max_actions_per_turn, format_reward=format_reward, **kwargs)
        self.dim_room = check_config(tuple(dim_room), num_boxes, min_solution_length, max_solution_length)
        self.check_limit("dim_room", dim_room, "cells per side")
        self.check_limit("num_boxes", num_boxes)
        self.check_limit("tile_size", tile_size, "pixels")
        self.check_limit("max_gen_tries", max_gen_tries)
        if num_gen_steps is not None:
            self.check_limit("num_gen_steps", num_gen_steps)
        self.num_boxes = int(num_boxes)
        self.min_solution_length = int(min_solution_length)
        self.max_solution_length = None if max_solution_length is None else int(max_solution_length)
        self.num_gen_steps = None if num_gen_steps is None else int(num_gen_steps)
        self.max_gen_tries = int(max_gen_tries)
        if int(max_gen_tries) < 1:
            raise ValueError(f"max_gen_tries must be >= 1, got {max_gen_tries}")
        self.tile_size = int(tile_size)
        render.tiles(self.tile_size)  # validates the size and warms the cache
        self.success_reward = float(success_reward)
        self.step_penalty = float(step_penalty)
        self.grid_shape = self.dim_room
        self.image_shape = (self.dim_room[0] * self.tile_size, self.dim_room[1] * self.tile_size, 3)
        self._build_spaces()
        # A level from the start, so system_prompt()/render() work before reset() and an impossible
        # generator config fails here, at construction.
        self._generate(0)

    # ------------------------------------------------------------------ levels
    def _generate(self, seed: int) -> None:
        level = generate_level(
            seed,
            self.dim_room,
            self.num_boxes,
            self.min_solution_length,
            self.max_solution_length,
            num_gen_steps=self.num_gen_steps,
            max_tries=self.max_gen_tries,
        )
        self._set_level(level)

    def _load_level(self, rows: list[str]) -> None:
        self._set_level(parse_rows(rows))

    def _set_level(self, level: Level) -> None:
        h, w = level.height, level.width
        self.check_image_shape(h * self.tile_size, w * self.tile_size)  # a given level may be larger than dim_room
        if (h, w) != tuple(self.grid_shape):
            self.grid_shape = (h, w)
            self.image_shape = (h * self.tile_size, w * self.tile_size, 3)
            self._build_spaces()
        self._level = level
        self._board: Board = board_of(level)
        self._rows = level.rows()
        self._optimal_length = level.optimal_length
        self._player = level.player
        self._boxes = set(level.boxes)
        self._targets = frozenset(level.targets)
        static = np.full(h * w, render.FLOOR, dtype=np.intp)
        static[list(level.walls)] = render.WALL
        static[list(level.targets)] = render.TARGET
        self._static_codes = static
        self._heuristics: dict[str, Any] | None = None

    def level_rows(self) -> list[str]:
        return list(self._rows)

    @property
    def level(self) -> Level:
        """The start position of the current level."""
        return self._level

    @property
    def optimal_length(self) -> int | None:
        """Fewest moves that solve the current level from its start (None if unsolvable)."""
        if self._optimal_length is None:
            plan = solve_state(self._board, self._level.player, self._level.boxes)
            self._optimal_length = -1 if plan is None else len(plan)
        return None if self._optimal_length < 0 else self._optimal_length

    # ------------------------------------------------------------------ dynamics
    def _canonical_action(self, token: str) -> str | None:
        i = _ACTION_INDEX.get(token.strip().lower())
        return None if i is None else ACTIONS[i]

    def _execute(self, action: str) -> tuple[bool, float, bool]:
        d = _ACTION_INDEX[action.lower()]
        nb = self._board.nbr[d]
        q = nb[self._player]
        effective = False
        if q >= 0:
            if q in self._boxes:
                r = nb[q]
                if r >= 0 and r not in self._boxes:
                    was_stuck = self._stuck(q)
                    self._boxes.remove(q)
                    self._boxes.add(r)
                    self._player = q
                    effective = True
                    reason = None if was_stuck else self._stuck(r)
                    if reason:  # this push made the level unsolvable (the episode goes on)
                        self._event("deadlock", self._rc(r), **{"from": self._rc(q), "action": action, "reason": reason})
            else:
                self._player = q
                effective = True
        reward = -self.step_penalty
        done = self.is_success()
        if done:
            reward += self.success_reward
        return effective, reward, done

    def is_success(self) -> bool:
        return self._boxes <= self._targets

    def _stuck(self, box: int) -> str | None:
        """Why the box at ``box`` can never reach a target: ``"dead_square"`` (a non-target cell no
        sequence of pushes leads out of to a target), ``"block"`` (a 2×2 square of walls and boxes
        holding a box off target: none of them can move again), else None."""
        b = self._board
        if b.dead[box]:
            return "dead_square"
        nbr = b.nbr

        def solid(c: int) -> bool:  # -1 = a wall or outside the grid
            return c < 0 or c in self._boxes

        for vd in (0, 1):  # the four 2×2 squares that contain the box: (up | down) × (left | right)
            v = nbr[vd][box]
            if not solid(v):
                continue
            for hd in (2, 3):
                h = nbr[hd][box]
                if not solid(h):
                    continue
                corner = nbr[hd][v] if v >= 0 else (nbr[vd][h] if h >= 0 else -1)
                if solid(corner):
                    square = [c for c in (box, v, h, corner) if c >= 0]  # the boxes of the square
                    if any(c not in self._targets for c in square):
                        return "block"
        return None

    def failure(self) -> str | None:
        return "deadlock" if any(self._stuck(b) for b in self._boxes) else None

    # ------------------------------------------------------------------ state
    def _rc(self, cell: int) -> list[int]:
        w = self._board.width
        return [cell // w, cell % w]

    def cell(self) -> list[int]:
        return self._rc(self._player)

    def state(self) -> dict[str, Any]:
        boxes = sorted(self._boxes)
        return {
            "player": self._rc(self._player),
            "boxes": [self._rc(b) for b in boxes],
            "targets": [self._rc(t) for t in self._level.targets],
            "boxes_on_target": sum(b in self._targets for b in boxes),
            "shape": [self._board.height, self._board.width],
        }

    def relations(self, state: dict[str, Any]) -> list[list[str]]:
        pr, pc = state["player"]
        covered = {tuple(b) for b in state["boxes"]}
        objects = [("box", b) for b in state["boxes"]]
        objects += [("target", t) for t in state["targets"] if tuple(t) not in covered]
        out: list[list[str]] = []
        for name, (r, c) in objects:
            vertical = "above" if r < pr else "below" if r > pr else "same row as"
            horizontal = "left of" if c < pc else "right of" if c > pc else "same column as"
            out.append([name, vertical, "player"])
            out.append([name, horizontal, "player"])
        return out

    def action_targets(self) -> list[list[int]]:
        return []

    # ------------------------------------------------------------------ rendering
    def render_rgb(self) -> np.ndarray:
        codes = self._static_codes.copy()
        for b in self._boxes:
            codes[b] = render.BOX_ON_TARGET if b in self._targets else render.BOX
        p = self._player
        codes[p] = render.PLAYER_ON_TARGET if p in self._targets else render.PLAYER
        return render.blit(codes.reshape(self._board.height, self._board.width), self.tile_size)

    def render_text(self) -> str:
        b = self._board
        return "\n".join(render_rows(b.height, b.width, b.walls, b.targets, tuple(self._boxes), self._player))

    # ------------------------------------------------------------------ prompt
    def task_text(self) -> str:
        n = len(self._level.boxes)
        return f"Push the {'box' if n == 1 else f'{n} boxes'} onto the target{'s' if n > 1 else ''}."

    def rules_text(self) -> str:
        lines = [
            "You are playing Sokoban, a puzzle seen from above. You are the player; your goal is to push every "
            "box onto a target.",
            "Moving into a box pushes it one cell in the same direction if the cell behind it is free. Boxes "
            "cannot be pulled; walls block you and boxes. A box pushed into a corner or along a wall with no "
            "target can never reach a target again.",
            "Up moves toward the top of the grid, Down toward the bottom, Left and Right sideways.",
        ]
        if self.obs_mode in ("text", "both"):
            lines.append(
                "Grid symbols (rows listed top to bottom): "
                + ", ".join(f"{s} {SYMBOL_LEGEND[s]}" for s in SYMBOLS)
                + "."
            )
        if self.obs_mode in ("vision", "both"):
            lines.append(
                "In the image: brick cells are walls, dark cells are floor, red rings are targets, orange crates "
                "are boxes, green crates are boxes on targets, and the blue figure is you."
            )
        lines.append(f"Reward: {self.success_reward:g} when every box is on a target.")
        return "\n".join(lines)

    # ------------------------------------------------------------------ heuristics and solver
    def grid_heuristics(self) -> dict[str, Any]:
        if self._heuristics is None:
            b = self._board
            h, w = b.height, b.width
            dist = [-1] * (h * w)
            queue = deque(b.targets)
            for t in b.targets:
                dist[t] = 0
            while queue:
                c = queue.popleft()
                for nb in b.nbr:
                    n = nb[c]
                    if n >= 0 and dist[n] < 0:
                        dist[n] = dist[c] + 1
                        queue.append(n)
            pushes = self._push_distance()
            self._heuristics = {
                "shape": [h, w],
                "hazard": [self._rc(c) for c in sorted(b.walls)],
                "goals": [self._rc(t) for t in b.targets],
                "goal_distance": [dist[r * w : (r + 1) * w] for r in range(h)],
                "box_deadlock": [self._rc(c) for c in simple_deadlock_cells(b)],
                # the box-level atlas's heuristics: where the boxes start, and pushes to the nearest target
                "boxes": [self._rc(c) for c in sorted(self._level.boxes)],
                "box_distance": [pushes[r * w : (r + 1) * w] for r in range(h)],
            }
        return {k: [list(x) if isinstance(x, list) else x for x in v] for k, v in self._heuristics.items()}

    def _push_distance(self) -> list[int]:
        """Per cell, the fewest pushes that bring a lone box there to a target (walls only; −1 = never,
        i.e. a dead square): a BFS back from the targets, where a box reaches x from b = x − d only if
        the player can stand at b − d to push it."""
        b = self._board
        dist = [-1] * b.size
        queue = deque(b.targets)
        for t in b.targets:
            dist[t] = 0
        while queue:
            x = queue.popleft()
            for d in range(4):
                back = b.nbr[OPPOSITE[d]]
                src = back[x]  # the box came from src, pushed in direction d
                if src >= 0 and dist[src] < 0 and back[src] >= 0:
                    dist[src] = dist[x] + 1
                    queue.append(src)
        return dist

    def solve(self) -> list[str]:
        """Fewest-moves plan from the current state; ``[]`` when solved already or unsolvable (deadlock)."""
        plan = solve_state(self._board, self._player, tuple(self._boxes))
        return plan or []
