"""Text skills mined from (pattern, action) statistics, no LLM.

Every primitive move gets a pattern key (:func:`pattern_moves`): on grids the 3×3 tiles around the
cell the move enters, turned so the move points up (hazards, goals, boxes, dead corners, the edge);
in navigation the target's side relative to the heading and the blocked sides; in manipulation how
far a pick/place target lay from the nearest object. For each (env, pattern, action) the memory
counts N, failures (the move changed nothing, ended the episode in failure, or raised a failure
event: deadlock, collision, failed pick/place) and success-path uses (the move was part of a successful
episode). A rule is emitted when N ≥ min_support and the Wilson lower bound of its rate clears the
threshold ("Avoid …" for failures; "Prefer …" for success paths, which must also clear the env's base rate
of success-path moves); each later update where the key occurs
votes +1 (the batch rate agrees, ≥ 0.5) or −1; a rule whose score falls below 0 is dropped. At most
``max_rules`` rules per env of at most 32 words are kept, ranked by support × confidence.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from atlasva.memory.atlas import LevelGeometry, turn_events
from atlasva.stats import wilson_interval

DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
WHERE = {"left": "to your left", "right": "to your right", "up": "above you", "down": "below you"}
HAZARD_NAMES = {"frozenlake": "hole", "sokoban": "wall"}
MAX_WORDS = 32
_DIR_ORDER = tuple(DIRECTIONS)


def wilson_lower(successes: float, n: float) -> float:
    """Lower end of the 95% Wilson score interval for a rate of ``successes``/``n`` (0 when n = 0)."""
    return wilson_interval(successes, n)[0] if n > 0 else 0.0


# --------------------------------------------------------------------------- pattern keys

NAV_MOVES = {"move_forward": 0, "move_right": 1, "move_backward": 2, "move_left": 3}  # heading offset
NAV_TURNS = {"turn_right": 1, "turn_left": -1}
NAV_HEADINGS = ("north", "east", "south", "west")
NAV_STEPS = ((-1, 0), (0, 1), (1, 0), (0, -1))
SIDES = ("ahead", "right", "behind", "left")  # heading-relative, clockwise
GRASP_KINDS = {"pick": False, "place": False, "pick_failed": True, "place_failed": True}  # kind -> failed
FAILURE_EVENTS = ("deadlock", "collision", "pick_failed", "place_failed")
# the 3×3 window around the cell a move enters, rotated so the move points up: row 0 = two ahead,
# row 1 = ahead, row 2 = your own row; the agent ('@') sits at row 2, column 1
WINDOW_NAMES = ("2-ahead-left", "2-ahead", "2-ahead-right", "ahead-left", "ahead", "ahead-right", "left", "@", "right")
WINDOW_ORDER = (1, 6, 8, 3, 5, 0, 2)  # the order a rule names the context cells in (the cell ahead is the subject)


def _rotate(direction: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """(forward, left) unit vectors in (row, col) for a move in ``direction``."""
    dr, dc = direction
    return (dr, dc), (-dc, dr)


_ROTATIONS = [_rotate(d) for d in DIRECTIONS.values()]
DIRECTIONS_INDEX = {name: (i, d) for i, (name, d) in enumerate(DIRECTIONS.items())}
_GRID_MOVES: dict[str, tuple[int, tuple[int, int]] | None] = {}  # action string -> (direction index, step)
_NOT_GRID: set[str] = set()


def window_table(geom: LevelGeometry) -> dict[tuple[int, int, int], str]:
    """The static 3×3 windows (walls/hazards, goals, dead squares, the grid edge) per (row, col, direction
    index into DIRECTIONS) of the cell a move *enters*, as 9-character strings; cached on the geometry.
    Boxes are added per move."""
    cached = geom._cache.get("windows")
    if cached is not None:
        return cached
    h, w = geom.shape
    tiles = np.full((h, w), ord("."), dtype=np.uint8)
    tiles[geom.deadlock] = ord("x")
    for r, c in geom.goals:
        if 0 <= r < h and 0 <= c < w:
            tiles[r, c] = ord("G")
    tiles[geom.hazard] = ord("H")
    padded = np.full((h + 2, w + 2), ord("#"), dtype=np.uint8)  # one ring of "off the grid"
    padded[1:-1, 1:-1] = tiles
    table: dict[tuple[int, int, int], str] = {}
    for di, (f, left) in enumerate(_ROTATIONS):
        planes = []
        for k in range(9):
            i, j = divmod(k, 3)
            dr, dc = (1 - i) * f[0] + (1 - j) * left[0], (1 - i) * f[1] + (1 - j) * left[1]
            planes.append(np.full((h, w), ord("@"), np.uint8) if k == 7 else padded[1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w])
        words = np.ascontiguousarray(np.stack(planes, axis=-1)).view("S9").reshape(h, w)
        for r in range(h):
            for c in range(w):
                table[(r, c, di)] = words[r, c].decode("ascii")
    geom._cache["windows"] = table
    return table


OFF_GRID = "#" * 9  # a move off the grid (the env kept the agent in place): nothing is known there


def grid_window(geom: LevelGeometry, entered: tuple[int, int], direction: str, boxes: set[tuple[int, int]]) -> str:
    """The rotated 3×3 window (9 characters, row by row) around the cell a grid move enters."""
    return _window(window_table(geom), entered[0], entered[1], _DIR_ORDER.index(direction), boxes)


def _window(table: dict[tuple[int, int, int], str], r: int, c: int, di: int, boxes: Any) -> str:
    win = table.get((r, c, di))
    if win is None:
        return OFF_GRID
    if boxes:
        f, left = _ROTATIONS[di]
        chars = None
        for b in boxes:
            dr, dc = b[0] - r, b[1] - c
            if abs(dr) + abs(dc) > 2:
                continue
            i, j = 1 - (dr * f[0] + dc * f[1]), 1 - (dr * left[0] + dc * left[1])
            if 0 <= i <= 2 and 0 <= j <= 2 and (i, j) != (2, 1):
                chars = chars or list(win)
                chars[3 * i + j] = "B"
        if chars is not None:
            return "".join(chars)
    return win


def _nav_key(geom: LevelGeometry, cell: tuple[int, int], heading: int, target: tuple[int, int]) -> str:
    """Heading-relative key: which sides are blocked, and where the target lies (bucketed bearing)."""
    h, w = geom.shape
    blocked = []
    for k, side in enumerate(SIDES):
        dr, dc = NAV_STEPS[(heading + k) % 4]
        r, c = cell[0] + dr, cell[1] + dc
        if not (0 <= r < h and 0 <= c < w) or geom.hazard[r, c]:
            blocked.append(side)
    dr, dc = target[0] - cell[0], target[1] - cell[1]
    fr, fc = NAV_STEPS[heading]
    ahead, right = dr * fr + dc * fc, dr * fc - dc * fr  # components along the heading and to its right
    if ahead == 0 and right == 0:
        where = "here"
    elif abs(ahead) >= abs(right):
        where = "ahead" if ahead > 0 else "behind"
    else:
        where = "right" if right > 0 else "left"
    return f"nav:{where}:{','.join(blocked) or '-'}"


def _grasp_key(event: dict[str, Any]) -> str:
    """Where a commanded pick/place target lay: on (≤ 3 cm), near (≤ 8 cm) or away from the nearest
    (other) object, from the event's ``nearest_object_m``."""
    if event.get("reason") in ("gripper_empty", "already_holding"):
        return f"grasp:{event['reason']}"
    d = event.get("nearest_object_m")
    where = "unknown" if d is None else ("on" if d <= 0.03 else "near" if d <= 0.08 else "away")
    return f"grasp:{where}"


def _thing(tile: str, env: str) -> str:
    if tile == "H":
        return HAZARD_NAMES.get(env, "hazard")
    if tile == "G":
        return "target" if env == "sokoban" else "goal"
    return {"#": "edge", "B": "box", "x": "dead square", ".": "free space"}.get(tile, tile)


def _describe(pattern: str, env: str) -> str:
    """The condition of a rule in words (what the key says), for the templates: on grids the cell the
    move enters (and, when it holds a box, the cell the box would go to), then the other non-free cells
    of the window grouped by what they hold."""
    kind, _, body = pattern.partition(":")
    if kind == "grid":
        def a_(t: str) -> str:
            return _thing(t, env) if t == "." else ("the " if t in "#G" else "a ") + _thing(t, env)

        ahead, two = body[4], body[1]
        # dead squares matter for boxes only: named where a push would put a box, else free space
        main = f"pushing a box into {a_(two)}" if ahead == "B" else f"into {a_('.' if ahead == 'x' else ahead)}"
        groups: dict[str, list[str]] = {}
        for k in WINDOW_ORDER:
            t = body[k]
            if t not in ".#x" and not (k == 1 and ahead == "B"):
                groups.setdefault(t, []).append(WINDOW_NAMES[k])
        context = "; ".join(f"{_thing(t, env)}{'s' if len(p) > 1 else ''} {'/'.join(p)}" for t, p in groups.items())
        return f"{main} ({context})" if context else main
    if kind == "nav":
        where, blocked = body.split(":")
        target = "the target is here" if where == "here" else (
            f"the target is {where}" if where in ("ahead", "behind") else f"the target is to your {where}")
        walls = "" if blocked == "-" else f", blocked {' and '.join(blocked.split(','))}"
        return f"when {target}{walls}"
    if kind == "grasp":
        return {"on": "at an object", "near": "next to an object", "away": "away from every object",
                "gripper_empty": "with an empty gripper", "already_holding": "while already holding an object"}.get(
            body, "with an unknown target")
    return f"in pattern {body}"


def pattern_moves(episode: Any, geom: LevelGeometry) -> list[tuple[str, str, bool]]:
    """(pattern key, action, failed) for every primitive move of ``episode`` the miner has a key for.

    Grid moves (Up/Down/Left/Right): ``grid:`` + the rotated 3×3 window around the entered cell (Sokoban
    boxes replayed from the player's cells). Navigation moves and turns: ``nav:`` + the target's side and
    the blocked sides, the heading taken from the turn's start state and replayed through turns.
    Manipulation picks/places: ``grasp:`` + how far the target was from the nearest object. A move
    failed when it changed nothing (a bump: a (pattern, action) fact, not cell danger), ended the
    episode in a terminal failure, or raised a failure event (deadlock, collision, failed pick/place).
    """
    out: list[tuple[str, str, bool]] = []
    turns = episode.turns
    last_turn = len(turns) - 1
    failed_episode = episode.outcome == "failure"
    boxes = set(geom.boxes) if geom.boxes else None
    table = None
    state = getattr(episode, "start_state", None) or {}
    for ti, turn in enumerate(turns):
        events = turn_events(turn)
        failed_steps: Any = ()
        if events:
            failed_steps = {int(e.get("step", -1)) for e in events if e.get("kind") in FAILURE_EVENTS}
            for e in events:
                kind = e.get("kind")
                if kind in GRASP_KINDS:
                    out.append((_grasp_key(e), kind.split("_")[0], GRASP_KINDS[kind]))
        cells, actions = turn.cells, turn.actions
        n = min(len(actions), len(cells) - 1)
        fatal = ti == last_turn and n == len(actions) and turn.terminated and failed_episode
        heading = None
        for k in range(n):
            action = actions[k]
            move = _GRID_MOVES.get(action)
            if move is None and action not in _NOT_GRID:
                low = action.strip().lower()
                move = _GRID_MOVES[action] = DIRECTIONS_INDEX.get(low) if low in DIRECTIONS else None
                if move is None:
                    _NOT_GRID.add(action)
            a, b = cells[k], cells[k + 1]
            failed = (fatal and k == n - 1) or k in failed_steps
            if move is not None:
                di, (dr, dc) = move
                r, c = a[0] + dr, a[1] + dc
                if table is None:
                    table = window_table(geom)
                out.append(("grid:" + _window(table, r, c, di, boxes), action, failed or a == b))
                if boxes and (r, c) in boxes and b[0] == r and b[1] == c:  # a push: the box moves on
                    boxes.remove((r, c))
                    boxes.add((r + dr, c + dc))
                continue
            low = action.strip().lower()
            if low not in NAV_MOVES and low not in NAV_TURNS:
                continue
            if heading is None:  # the heading at the start of this turn, then replayed through its turns
                agent = state.get("agent") if isinstance(state, dict) else None
                target = state.get("target", {}).get("cell") if isinstance(state, dict) else None
                if not isinstance(agent, dict) or agent.get("heading") not in NAV_HEADINGS or target is None:
                    break
                heading = NAV_HEADINGS.index(agent["heading"])
                goal = (int(target[0]), int(target[1]))
            key = _nav_key(geom, (int(a[0]), int(a[1])), heading, goal)
            out.append((key, action, failed or (low in NAV_MOVES and a == b)))
            heading = (heading + NAV_TURNS.get(low, 0)) % 4
        state = turn.state or {}
    return out


@dataclass
class Rule:
    env: str
    pattern: str
    action: str
    kind: str  # avoid | prefer
    support: int
    rate: float
    confidence: float  # Wilson lower bound
    score: int = 1

    def key(self) -> tuple[str, str, str, str]:
        return (self.env, self.pattern, self.action, self.kind)

    def text(self) -> str:
        cond = _describe(self.pattern, self.env)
        if self.kind == "avoid":
            s = f"Avoid {self.action} {cond}: it failed {self.rate:.0%} of {self.support} times."
        else:
            s = f"Prefer {self.action} {cond}: it was on successful paths {self.rate:.0%} of {self.support} times."
        words = s.split()
        return " ".join(words[:MAX_WORDS])


def _prefer_allowed(pattern: str) -> bool:
    """Prefer rules only where the key holds something to go for (a goal or box in the window, a target
    side in navigation, a target next to or at an object)."""
    kind, _, body = pattern.partition(":")
    if kind == "grid":
        return "G" in body or "B" in body
    return kind in ("nav", "grasp")


@dataclass
class SkillMiner:
    min_support: int = 10
    threshold: float = 0.6
    max_rules: int = 8

    def __post_init__(self) -> None:
        # (env, pattern, action) -> [N, failures, success_path]
        self.stats: dict[tuple[str, str, str], list[float]] = {}
        self.rules: list[Rule] = []

    @staticmethod
    def counts(episode: Any, geom: LevelGeometry, into: dict | None = None) -> dict[tuple[str, str], list[float]]:
        """The moves of ``episode`` counted: (pattern, action) -> [N, failures, success-path uses]
        (added to ``into`` when given)."""
        out: dict[tuple[str, str], list[float]] = {} if into is None else into
        succ = 1.0 if episode.success else 0.0
        for key, action, failed in pattern_moves(episode, geom):
            v = out.get((key, action))
            if v is None:
                out[(key, action)] = [1.0, float(failed), succ]
            else:
                v[0] += 1.0
                v[1] += failed
                v[2] += succ
        return out

    @staticmethod
    def batch_counts(items: list[tuple[Any, LevelGeometry | None]]) -> dict[str, dict[tuple[str, str], list[float]]]:
        """:meth:`counts` of a batch of (episode, geometry), summed per env (episodes without a geometry
        are skipped)."""
        out: dict[str, dict[tuple[str, str], list[float]]] = {}
        for episode, geom in items:
            if geom is not None:
                SkillMiner.counts(episode, geom, out.setdefault(str(episode.env_name), {}))
        return out

    def update(self, batch: list[tuple[str, Any]]) -> None:
        """``batch``: (env, moves) — a list of (pattern, action, failed, on_success_path) tuples or the
        dict of :meth:`counts`. Count, vote on existing rules, then mine new ones."""
        batch_counts: dict[tuple[str, str, str], list[float]] = {}
        for env, moves in batch:
            if isinstance(moves, dict):
                items = [((env, pattern, action), v) for (pattern, action), v in moves.items()]
            else:
                items = [((env, pattern, action), (1.0, float(failed), float(success)))
                         for pattern, action, failed, success in moves]
            for k, (n, f, sc) in items:
                for table in (self.stats, batch_counts):
                    s = table.setdefault(k, [0.0, 0.0, 0.0])
                    s[0] += n
                    s[1] += f
                    s[2] += sc
        kept: list[Rule] = []
        for rule in self.rules:
            k = (rule.env, rule.pattern, rule.action)
            if k in batch_counts:
                n, f, s = batch_counts[k]
                rate = (f if rule.kind == "avoid" else s) / n
                rule.score += 1 if rate >= 0.5 else -1
            n, f, s = self.stats[k]
            rule.support, rule.rate = int(n), (f if rule.kind == "avoid" else s) / n
            rule.confidence = wilson_lower(f if rule.kind == "avoid" else s, n)
            if rule.score >= 0:
                kept.append(rule)
        have = {r.key() for r in kept}
        # a prefer rule must beat the env's base rate of success-path moves, not only the threshold: once
        # a learner mostly succeeds, every move lies on a successful path and says nothing
        totals: dict[str, list[float]] = {}
        for (env, _, _), (n, _, s) in self.stats.items():
            t = totals.setdefault(env, [0.0, 0.0])
            t[0] += n
            t[1] += s
        for (env, pattern, action), (n, f, s) in self.stats.items():
            if n < self.min_support:
                continue
            cands = [("avoid", f, self.threshold)]
            if _prefer_allowed(pattern):
                cands.append(("prefer", s, max(self.threshold, totals[env][1] / totals[env][0])))
            for kind, x, bar in cands:
                conf = wilson_lower(x, n)
                if conf >= bar and (env, pattern, action, kind) not in have:
                    kept.append(Rule(env, pattern, action, kind, int(n), x / n, conf))
                    have.add((env, pattern, action, kind))
        kept.sort(key=lambda r: (r.support * r.confidence, r.env, r.pattern, r.action), reverse=True)
        per_env: dict[str, int] = {}
        self.rules = []
        for r in kept:  # at most max_rules per env
            if per_env.get(r.env, 0) < self.max_rules:
                per_env[r.env] = per_env.get(r.env, 0) + 1
                self.rules.append(r)

    def lines(self, env: str) -> list[str]:
        return [r.text() for r in self.rules if r.env == env]

    def to_json(self) -> dict[str, Any]:
        return {
            "stats": [[*k, *v] for k, v in sorted(self.stats.items())],
            "rules": [asdict(r) for r in self.rules],
        }

    def load_json(self, d: dict[str, Any]) -> None:
        self.stats = {(str(e), str(p), str(a)): [float(n), float(f), float(s)] for e, p, a, n, f, s in d["stats"]}
        self.rules = [Rule(**r) for r in d["rules"]]
