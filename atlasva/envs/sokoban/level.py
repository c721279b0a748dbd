"""Sokoban levels: the text symbols (VAGEN's), parsing with validation, and writing back.

A level is a rectangular H×W grid. Cells are addressed by a flat index ``cell = row * W + col``
(row 0 at the top). Cells outside the grid count as walls, so a given level need not be framed
by ``#``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

WALL, FLOOR, TARGET, BOX_ON_TARGET, BOX, PLAYER, PLAYER_ON_TARGET = "#", "_", "O", "√", "X", "P", "S"
SYMBOLS = (WALL, FLOOR, TARGET, BOX_ON_TARGET, BOX, PLAYER, PLAYER_ON_TARGET)
SYMBOL_LEGEND = {
    WALL: "wall",
    FLOOR: "floor",
    TARGET: "target",
    BOX_ON_TARGET: "box on target",
    BOX: "box",
    PLAYER: "player",
    PLAYER_ON_TARGET: "player on target",
}


@dataclass(frozen=True)
class Level:
    """A Sokoban position: static geometry (walls, targets) plus the movable parts.

    ``optimal_length`` is the fewest primitive moves (pushes included) that solve the level from
    this position, when known (the generator always sets it).
    """

    height: int
    width: int
    walls: frozenset[int]
    targets: tuple[int, ...]
    boxes: tuple[int, ...]
    player: int
    optimal_length: int | None = None

    def rc(self, cell: int) -> list[int]:
        return [cell // self.width, cell % self.width]

    def rows(self) -> list[str]:
        return render_rows(self.height, self.width, self.walls, self.targets, self.boxes, self.player)

    @classmethod
    def from_rows(cls, rows: Sequence[str] | str) -> Level:
        return parse_rows(rows)


def render_rows(
    height: int, width: int, walls: frozenset[int], targets: Sequence[int], boxes: Sequence[int], player: int
) -> list[str]:
    """The grid in text symbols, one string per row."""
    grid = [FLOOR] * (height * width)
    for c in walls:
        grid[c] = WALL
    for c in targets:
        grid[c] = TARGET
    tset = set(targets)
    for c in boxes:
        grid[c] = BOX_ON_TARGET if c in tset else BOX
    grid[player] = PLAYER_ON_TARGET if player in tset else PLAYER
    return ["".join(grid[r * width : (r + 1) * width]) for r in range(height)]


def parse_rows(rows: Sequence[str] | str) -> Level:
    """Read a level written in text symbols; raise ``ValueError`` naming the problem if it is malformed.

    Rows may be given as a list of strings or one newline-joined string; blank lines and whitespace
    around a row are ignored. Requirements: rectangular rows, only the symbols ``# _ O √ X P S``,
    exactly one player, at least one box and as many targets as boxes.
    """
    if isinstance(rows, str):
        rows = rows.splitlines()
    if not isinstance(rows, Sequence) or not all(isinstance(r, str) for r in rows):
        raise ValueError("a Sokoban level must be a list of strings (one per row) or a newline-joined string")
    rows = [r.strip() for r in rows if r.strip()]
    if not rows:
        raise ValueError("the Sokoban level is empty (no rows)")
    width = len(rows[0])
    for i, r in enumerate(rows):
        if len(r) != width:
            raise ValueError(
                f"Sokoban level rows must all have the same length: row 0 has {width} symbols, row {i} has {len(r)}"
            )
    height = len(rows)
    walls: set[int] = set()
    targets: list[int] = []
    boxes: list[int] = []
    players: list[int] = []
    for r, row in enumerate(rows):
        for c, ch in enumerate(row):
            cell = r * width + c
            if ch == WALL:
                walls.add(cell)
            elif ch == FLOOR:
                pass
            elif ch == TARGET:
                targets.append(cell)
            elif ch == BOX:
                boxes.append(cell)
            elif ch == BOX_ON_TARGET:
                boxes.append(cell)
                targets.append(cell)
            elif ch == PLAYER:
                players.append(cell)
            elif ch == PLAYER_ON_TARGET:
                players.append(cell)
                targets.append(cell)
            else:
                raise ValueError(
                    f"unknown symbol {ch!r} at row {r}, column {c} of the Sokoban level; accepted: "
                    + ", ".join(f"{s!r} ({SYMBOL_LEGEND[s]})" for s in SYMBOLS)
                )
    if len(players) != 1:
        raise ValueError(f"a Sokoban level needs exactly one player ('P' or 'S'), found {len(players)}")
    if not boxes:
        raise ValueError("a Sokoban level needs at least one box ('X' or '√'), found none")
    if len(boxes) != len(targets):
        raise ValueError(
            f"a Sokoban level needs as many targets as boxes: {len(boxes)} box(es), {len(targets)} target(s)"
        )
    return Level(height, width, frozenset(walls), tuple(sorted(targets)), tuple(sorted(boxes)), players[0])
