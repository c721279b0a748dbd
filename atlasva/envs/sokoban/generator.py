"""Seeded Sokoban level generator.

One attempt: carve a room by a random walk inside a wall frame, put the targets on random floor
cells, then search *backwards* from the solved position (reverse steps and pulls, breadth-first).
Every position that search reaches is solvable, and its BFS depth is its exact optimal solution
length, so the generator picks a start position uniformly among those whose length lies in the
requested range. Rooms without such a position are redrawn, up to a fixed budget; then a
``RuntimeError`` says what was tried.

Only ``np.random.default_rng(seed)`` is used: a seed gives the same level in every process.
"""

from __future__ import annotations

import numpy as np

from atlasva.envs.sokoban.level import Level
from atlasva.envs.sokoban.solver import MAX_STATES, make_board, reverse_search

#: Carving brushes (cell offsets around the walker): a dot, bars, an L-corner and a plus.
_BRUSHES = (
    ((0, 0),),
    ((0, 0), (0, 1)),
    ((0, 0), (1, 0)),
    ((0, 0), (0, 1), (1, 0)),
    ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)),
)
_STEPS = ((-1, 0), (1, 0), (0, -1), (0, 1))
DEFAULT_MAX_TRIES = 200
#: States stored by one reverse search while generating (keeps big multi-box rooms bounded).
GEN_MAX_STATES = 50_000


def check_config(
    dim_room: tuple[int, int], num_boxes: int, min_solution_length: int, max_solution_length: int | None
) -> tuple[int, int]:
    """Validate a generator config; returns (height, width). Raises ``ValueError`` on impossible ones."""
    if len(tuple(dim_room)) != 2:
        raise ValueError(f"dim_room must be (rows, cols), got {dim_room!r}")
    h, w = (int(x) for x in dim_room)
    if h < 3 or w < 3:
        raise ValueError(f"dim_room must be at least 3x3 (a wall frame around the floor), got {h}x{w}")
    if int(num_boxes) < 1:
        raise ValueError(f"num_boxes must be >= 1, got {num_boxes}")
    interior = (h - 2) * (w - 2)
    if int(num_boxes) + 1 > interior:
        raise ValueError(
            f"num_boxes={num_boxes} does not fit a {h}x{w} room: its {interior} interior floor cell(s) must "
            f"hold {num_boxes} box(es) plus the player"
        )
    if int(min_solution_length) < 1:
        raise ValueError(f"min_solution_length must be >= 1, got {min_solution_length}")
    if max_solution_length is not None and int(max_solution_length) < int(min_solution_length):
        raise ValueError(
            f"max_solution_length={max_solution_length} is below min_solution_length={min_solution_length}"
        )
    return h, w


def _index(u: float, n: int) -> int:
    """A uniform draw ``u`` in [0, 1) as an index into ``range(n)``."""
    return min(int(u * n), n - 1)


def carve_room(u: list[float], h: int, w: int, num_steps: int, p_turn: float = 0.35) -> frozenset[int]:
    """Wall cells of a room carved by a random walk inside the (h-2)×(w-2) interior.

    ``u`` holds ``3 + 3 * num_steps`` uniform draws in [0, 1): the start cell and direction, then
    per step whether to turn, the new direction and the brush to carve with.
    """
    r = 1 + _index(u[0], h - 2)
    c = 1 + _index(u[1], w - 2)
    d = _index(u[2], 4)
    open_: set[int] = set()
    nb = len(_BRUSHES)
    hi_r, hi_c = h - 2, w - 2
    for i in range(3, 3 + 3 * num_steps, 3):
        if u[i] < p_turn:
            d = int(u[i + 1] * 4) & 3
        for dr, dc in _BRUSHES[int(u[i + 2] * nb) % nb]:
            rr, cc = r + dr, c + dc
            if 0 < rr <= hi_r and 0 < cc <= hi_c:
                open_.add(rr * w + cc)
        dr, dc = _STEPS[d]
        r += dr
        c += dc
        r = 1 if r < 1 else hi_r if r > hi_r else r
        c = 1 if c < 1 else hi_c if c > hi_c else c
    return frozenset(x for x in range(h * w) if x not in open_)


def generate_level(
    seed: int | np.random.Generator,
    dim_room: tuple[int, int] = (6, 6),
    num_boxes: int = 1,
    min_solution_length: int = 1,
    max_solution_length: int | None = None,
    *,
    num_gen_steps: int | None = None,
    max_tries: int = DEFAULT_MAX_TRIES,
    max_states: int = GEN_MAX_STATES,
) -> Level:
    """A solvable level whose optimal solution length lies in ``[min_solution_length, max_solution_length]``.

    ``num_gen_steps`` is the random-walk length (default ``int(1.7 * (h + w))``). Raises
    ``ValueError`` for configs no level can meet by construction, ``RuntimeError`` after
    ``max_tries`` rooms without a fitting level.
    """
    h, w = check_config(dim_room, num_boxes, min_solution_length, max_solution_length)
    num_boxes, lo = int(num_boxes), int(min_solution_length)
    hi = None if max_solution_length is None else int(max_solution_length)
    steps = int(num_gen_steps) if num_gen_steps is not None else int(1.7 * (h + w))
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(int(seed))
    longest = -1
    small_rooms = 0
    n_draws = 3 + 3 * steps + num_boxes + 1
    for _ in range(max(1, int(max_tries))):
        # One block of uniform draws per room (numpy's per-call overhead dominates small rooms).
        u = rng.random(n_draws).tolist()
        walls = carve_room(u, h, w, steps)
        floor = [x for x in range(h * w) if x not in walls]
        if len(floor) < num_boxes + 1:
            small_rooms += 1
            continue
        base = 3 + 3 * steps
        for j in range(num_boxes):  # partial Fisher-Yates: distinct target cells
            k = j + _index(u[base + j], len(floor) - j)
            floor[j], floor[k] = floor[k], floor[j]
        targets = tuple(sorted(floor[:num_boxes]))
        board = make_board(h, w, walls, targets)
        states, starts = reverse_search(board, targets, max_depth=hi, max_states=max_states)
        depth_reached = len(starts) - 2
        longest = max(longest, depth_reached)
        if depth_reached < lo:
            continue
        a = starts[lo]
        b = len(states) if hi is None or hi + 1 >= len(starts) else starts[hi + 1]
        if b <= a:
            continue
        k = a + _index(u[-1], b - a)
        player, boxes = board.decode(states[k])
        length = next(d for d in range(lo, len(starts) - 1) if starts[d] <= k < starts[d + 1])
        return Level(h, w, walls, targets, boxes, player, optimal_length=length)
    rng_text = f"[{lo}, {hi if hi is not None else 'any'}]"
    raise RuntimeError(
        f"could not generate a {h}x{w} Sokoban level with {num_boxes} box(es) and optimal solution length in "
        f"{rng_text}: tried {max_tries} random rooms (random walk of {steps} steps; {small_rooms} had too little "
        f"floor); the longest optimal solution found was {longest} move(s) (reverse search capped at "
        f"{min(max_states, MAX_STATES)} states per room). Relax the length range or enlarge the room."
    )
