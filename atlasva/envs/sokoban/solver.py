"""Sokoban search: static board tables, dead squares, box deadlocks, the optimal solver and the
reverse ("pull") search the generator uses.

States are single Python ints: ``(boxes_mask << shift) | player`` where ``boxes_mask`` has bit
``cell`` set for each box and ``shift`` is the bit width of a cell index. Moves use precomputed
neighbour tables (``-1`` = wall or outside the grid), so the inner loops do only integer work.

The solver is a breadth-first search over primitive moves, so the plan it returns has the fewest
moves (pushes included). It never pushes a box onto a *dead square* (a non-target cell from which
no sequence of pushes can bring a box to any target, even on an otherwise empty board); such
states cannot lead to a solution, so pruning them keeps the search exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from atlasva.envs.sokoban.level import Level, parse_rows

ACTIONS = ("Up", "Down", "Left", "Right")
DELTAS = ((-1, 0), (1, 0), (0, -1), (0, 1))
OPPOSITE = (1, 0, 3, 2)
#: Default cap on stored states for one search (memory guard, about a few hundred MB at most).
MAX_STATES = 3_000_000


class SearchBudgetExceeded(RuntimeError):
    """A search stored more states than its budget allows (the answer is unknown, not "unsolvable")."""


@dataclass(frozen=True, eq=False)
class Board:
    """Static geometry of a level and the tables every search needs."""

    height: int
    width: int
    walls: frozenset[int]
    targets: tuple[int, ...]
    nbr: tuple[tuple[int, ...], ...]  # nbr[d][cell] -> neighbour cell in direction d, or -1
    floor: tuple[int, ...]  # non-wall cells, ascending
    target_mask: int
    shift: int

    @cached_property
    def dead(self) -> tuple[bool, ...]:
        """Dead squares (never a target), computed on first use: the generator does not need them."""
        live = _live_squares(self.nbr, self.targets)
        return tuple(c not in self.walls and c not in live for c in range(self.size))

    @property
    def size(self) -> int:
        return self.height * self.width

    def encode(self, player: int, boxes: Sequence[int]) -> int:
        mask = 0
        for b in boxes:
            mask |= 1 << b
        return (mask << self.shift) | player

    def decode(self, state: int) -> tuple[int, tuple[int, ...]]:
        player = state & ((1 << self.shift) - 1)
        mask = state >> self.shift
        return player, tuple(c for c in range(self.size) if (mask >> c) & 1)


_GRID_NBR: dict[tuple[int, int], tuple[tuple[int, ...], ...]] = {}


def _grid_neighbours(height: int, width: int) -> tuple[tuple[int, ...], ...]:
    """Neighbour tables of an empty ``height × width`` grid (cached per shape)."""
    key = (height, width)
    if key not in _GRID_NBR:
        tables = []
        for dr, dc in DELTAS:
            row = []
            for cell in range(height * width):
                rr, cc = cell // width + dr, cell % width + dc
                row.append(rr * width + cc if 0 <= rr < height and 0 <= cc < width else -1)
            tables.append(tuple(row))
        _GRID_NBR[key] = tuple(tables)
    return _GRID_NBR[key]


def make_board(height: int, width: int, walls: frozenset[int], targets: Sequence[int]) -> Board:
    size = height * width
    walls = frozenset(walls)
    nbr = [tuple(-1 if n < 0 or n in walls else n for n in row) for row in _grid_neighbours(height, width)]
    floor = tuple(c for c in range(size) if c not in walls)
    tmask = 0
    for t in targets:
        tmask |= 1 << t
    return Board(
        height=height,
        width=width,
        walls=walls,
        targets=tuple(sorted(targets)),
        nbr=tuple(nbr),
        floor=floor,
        target_mask=tmask,
        shift=max(1, (size - 1).bit_length()),
    )


def board_of(level: Level) -> Board:
    return make_board(level.height, level.width, level.walls, level.targets)


def _live_squares(nbr: Sequence[Sequence[int]], targets: Sequence[int]) -> set[int]:
    """Cells from which a lone box can be pushed onto some target ("pull from the targets").

    A box at ``x`` can be *pulled* one cell in direction ``d`` when ``x+d`` (where the puller
    stands) and ``x+2d`` (where the puller steps back to) are both floor. Every cell reached from a
    target by pulls is live; the remaining floor cells are dead squares.
    """
    live = set(targets)
    stack = list(targets)
    while stack:
        x = stack.pop()
        for d in range(4):
            y = nbr[d][x]
            if y >= 0 and nbr[d][y] >= 0 and y not in live:
                live.add(y)
                stack.append(y)
    return live


def simple_deadlock_cells(board: Board) -> list[int]:
    """Corner and wall-line deadlock cells: non-target floor cells where a box is stuck for good.

    Corner: blocked (wall or grid edge) above or below *and* left or right. Wall line: a maximal
    straight run of floor cells that is closed by walls at both ends, runs along a wall on one side
    for its whole length and holds no target; a box in it can only slide along the wall.
    """
    size, nbr = board.size, board.nbr
    targets = set(board.targets)
    floor = [c for c in range(size) if c not in board.walls]

    def blocked(c: int, d: int) -> bool:
        return nbr[d][c] < 0

    dead = {
        c
        for c in floor
        if c not in targets and (blocked(c, 0) or blocked(c, 1)) and (blocked(c, 2) or blocked(c, 3))
    }
    # Runs along rows (walls above or below) and along columns (walls left or right).
    for along, sides in (((2, 3), (0, 1)), ((0, 1), (2, 3))):
        back, fwd = along
        for c in floor:
            if not blocked(c, back):
                continue  # start runs at their first cell only
            run = [c]
            while not blocked(run[-1], fwd):
                run.append(nbr[fwd][run[-1]])
            if any(x in targets for x in run):
                continue
            for side in sides:
                if all(blocked(x, side) for x in run):
                    dead.update(run)
    return sorted(dead)


# --------------------------------------------------------------------------- forward (solver)


def solve_state(
    board: Board, player: int, boxes: Sequence[int], *, max_states: int = MAX_STATES
) -> list[str] | None:
    """Fewest-moves plan from (player, boxes), or ``None`` if the position cannot be solved.

    Raises :class:`SearchBudgetExceeded` if more than ``max_states`` states would be stored.
    """
    tmask = board.target_mask
    mask = 0
    for b in boxes:
        mask |= 1 << b
    if mask & ~tmask == 0:
        return []
    dead = board.dead
    if any(dead[b] for b in boxes):
        return None
    shift = board.shift
    pmask = (1 << shift) - 1
    start = (mask << shift) | player
    parent: dict[int, int] = {start: -1}  # state -> prev_state * 4 + direction
    frontier = [start]
    nbrs = tuple(enumerate(board.nbr))
    while frontier:
        nxt: list[int] = []
        append = nxt.append
        for s in frontier:
            p = s & pmask
            bm = s >> shift
            for d, nb in nbrs:
                q = nb[p]
                if q < 0:
                    continue
                if (bm >> q) & 1:
                    r = nb[q]
                    if r < 0 or (bm >> r) & 1 or dead[r]:
                        continue
                    b2 = bm ^ (1 << q) ^ (1 << r)
                    ns = (b2 << shift) | q
                    if ns in parent:
                        continue
                    parent[ns] = s * 4 + d
                    if b2 & ~tmask == 0:
                        return _path(parent, ns)
                else:
                    ns = (bm << shift) | q
                    if ns in parent:
                        continue
                    parent[ns] = s * 4 + d
                append(ns)
        if len(parent) > max_states:
            raise SearchBudgetExceeded(
                f"the Sokoban solver stored {len(parent)} states (budget {max_states}) without finishing"
            )
        frontier = nxt
    return None


def _path(parent: dict[int, int], state: int) -> list[str]:
    out: list[str] = []
    link = parent[state]
    while link >= 0:
        out.append(ACTIONS[link & 3])
        link = parent[link >> 2]
    out.reverse()
    return out


def solve_level(rows: Sequence[str] | str, *, max_states: int = MAX_STATES) -> list[str] | None:
    """Optimal solution (fewest primitive moves, pushes included) of a level in text symbols.

    Returns the action names (``"Up"``, ``"Down"``, ``"Left"``, ``"Right"``), ``[]`` if the level is
    already solved, or ``None`` if it cannot be solved. Malformed levels raise ``ValueError``; a
    search larger than ``max_states`` raises :class:`SearchBudgetExceeded`.
    """
    level = parse_rows(rows)
    return solve_state(board_of(level), level.player, level.boxes, max_states=max_states)


# --------------------------------------------------------------------------- reverse (generator)


def reverse_search(
    board: Board,
    boxes_on_targets: Sequence[int],
    *,
    max_depth: int | None = None,
    max_states: int = MAX_STATES,
) -> tuple[list[int], list[int]]:
    """Breadth-first search backwards from every solved position (boxes on the targets, player on
    any free floor cell) over reverse moves (steps and pulls).

    Returns ``(states, layer_starts)``: states in discovery order and the index where each distance
    layer begins (``states[layer_starts[k]:layer_starts[k+1]]`` are exactly the positions whose
    optimal solution takes ``k`` moves). The search stops after layer ``max_depth`` or once
    ``max_states`` are stored; every listed state's distance is exact either way.
    """
    shift = board.shift
    pmask = (1 << shift) - 1
    mask = 0
    for b in boxes_on_targets:
        mask |= 1 << b
    layer = [(mask << shift) | p for p in board.floor if not (mask >> p) & 1]
    seen = set(layer)
    states = list(layer)
    starts = [0]
    depth = 0
    moves = tuple((board.nbr[d], board.nbr[OPPOSITE[d]]) for d in range(4))
    while layer and (max_depth is None or depth < max_depth) and len(states) < max_states:
        nxt: list[int] = []
        append = nxt.append
        for s in layer:
            p = s & pmask
            bm = s >> shift
            for fwd, bwd in moves:
                back = bwd[p]  # the player came from here, moving in direction d
                if back < 0 or (bm >> back) & 1:
                    continue
                ns = (bm << shift) | back  # a plain step
                if ns not in seen:
                    seen.add(ns)
                    append(ns)
                f = fwd[p]
                if f >= 0 and (bm >> f) & 1:  # ...or a push of the box now at f (it stood on p)
                    ns = ((bm ^ (1 << f) ^ (1 << p)) << shift) | back
                    if ns not in seen:
                        seen.add(ns)
                        append(ns)
        if not nxt:
            break
        depth += 1
        starts.append(len(states))
        states.extend(nxt)
        layer = nxt
    starts.append(len(states))
    return states, starts
