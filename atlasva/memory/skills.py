"""Text skills mined from (local pattern, action) statistics, no LLM.

The pattern is what lies in the direction of a primitive move (from the env's grid heuristics:
a hazard, the goal, a deadlock cell, the grid edge, or free space). For each (env, pattern, action)
the memory counts N, failures (the move ended the episode in failure, or changed nothing) and
success-path uses (the move was part of a successful episode). A rule is emitted when N ≥ min_support
and the Wilson lower bound of its rate clears the threshold; each later update where the key occurs
votes +1 (the batch rate agrees, ≥ 0.5) or −1; a rule whose score falls below 0 is dropped. At most
``max_rules`` rules per env of at most 32 words are kept, ranked by support × confidence.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from atlasva.memory.atlas import BatchWalk, LevelGeometry, walk_batch
from atlasva.stats import wilson_interval

DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
WHERE = {"left": "to your left", "right": "to your right", "up": "above you", "down": "below you"}
HAZARD_NAMES = {"frozenlake": "hole", "sokoban": "wall"}
MAX_WORDS = 32


def wilson_lower(successes: float, n: float) -> float:
    """Lower end of the 95% Wilson score interval for a rate of ``successes``/``n`` (0 when n = 0)."""
    return wilson_interval(successes, n)[0] if n > 0 else 0.0


def tile_ahead(geom: LevelGeometry, cell: tuple[int, int], action: str) -> str | None:
    """What lies one step in the direction of ``action`` from ``cell`` (None: not a grid move)."""
    d = DIRECTIONS.get(action.strip().lower())
    if d is None:
        return None
    r, c = cell[0] + d[0], cell[1] + d[1]
    if not (0 <= r < geom.shape[0] and 0 <= c < geom.shape[1]):
        return "edge"
    if geom.hazard[r, c]:
        return "hazard"
    if (r, c) in geom.goals:
        return "goal"
    if geom.deadlock[r, c]:
        return "deadlock"
    return "free"


TILES = ("free", "deadlock", "goal", "hazard", "edge")
_DIR_ORDER = tuple(DIRECTIONS)
_ACTION_DIR: dict[str, int] = {}  # action string -> index into _DIR_ORDER (-1: not a grid move)


def tile_table(geom: LevelGeometry) -> np.ndarray:
    """4×H×W codes (index into ``TILES``) of what lies ahead of each cell per direction (cached)."""
    cached = geom._cache.get("tiles_ahead")
    if cached is not None:
        return cached
    h, w = geom.shape
    code = np.zeros((h + 2, w + 2), dtype=np.int64)  # padded: the border is the edge
    code[:] = TILES.index("edge")
    inner = np.zeros((h, w), dtype=np.int64)  # priority as tile_ahead: hazard > goal > deadlock > free
    inner[geom.deadlock] = TILES.index("deadlock")
    for r, c in geom.goals:
        if 0 <= r < h and 0 <= c < w:
            inner[r, c] = TILES.index("goal")
    inner[geom.hazard] = TILES.index("hazard")
    code[1:-1, 1:-1] = inner
    table = np.stack([code[1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w] for dr, dc in DIRECTIONS.values()])
    geom._cache["tiles_ahead"] = table
    return table


def _thing(tile: str, env: str) -> str:
    return {
        "hazard": f"a {HAZARD_NAMES.get(env, 'hazard')}",
        "goal": "the goal",
        "deadlock": "a dead corner",
        "edge": "the edge",
        "free": "free space",
    }.get(tile, tile)


@dataclass
class Rule:
    env: str
    tile: str
    action: str
    kind: str  # avoid | prefer
    support: int
    rate: float
    confidence: float  # Wilson lower bound
    score: int = 1

    def key(self) -> tuple[str, str, str, str]:
        return (self.env, self.tile, self.action, self.kind)

    def text(self) -> str:
        where = WHERE.get(self.action.lower(), "ahead")
        thing = _thing(self.tile, self.env)
        if self.kind == "avoid":
            s = f"Avoid {self.action} when {thing} is {where}: it failed {self.rate:.0%} of {self.support} times."
        else:
            s = f"Move {self.action} when {thing} is {where}: it was on successful paths {self.rate:.0%} of {self.support} times."
        words = s.split()
        return " ".join(words[:MAX_WORDS])


@dataclass
class SkillMiner:
    min_support: int = 10
    threshold: float = 0.6
    max_rules: int = 8

    def __post_init__(self) -> None:
        # (env, tile, action) -> [N, failures, success_path]
        self.stats: dict[tuple[str, str, str], list[float]] = {}
        self.rules: list[Rule] = []

    @staticmethod
    def events(episode: Any, geom: LevelGeometry) -> list[tuple[str, str, bool, bool]]:
        """(tile, action, failed, on_success_path) for every primitive move of ``episode``."""
        out: list[tuple[str, str, bool, bool]] = []
        n_turns = len(episode.turns)
        for ti, turn in enumerate(episode.turns):
            cells = [(int(c[0]), int(c[1])) for c in turn.cells]
            for ai, action in enumerate(turn.actions):
                if ai + 1 >= len(cells):
                    break
                tile = tile_ahead(geom, cells[ai], action)
                if tile is None:
                    continue
                last = ti == n_turns - 1 and ai == len(turn.actions) - 1
                fatal = last and turn.terminated and episode.outcome == "failure"
                failed = fatal or cells[ai + 1] == cells[ai]
                out.append((tile, action, failed, bool(episode.success)))
        return out

    @staticmethod
    def counts(episode: Any, geom: LevelGeometry) -> dict[tuple[str, str], list[float]]:
        """The events of ``episode`` already counted: (tile, action) -> [N, failures, success-path]
        (numpy over all moves at once; same numbers as counting :meth:`events`)."""
        table = geom._cache.get("tiles_ahead_list")
        if table is None:
            table = geom._cache["tiles_ahead_list"] = tile_table(geom).tolist()
        h, w = geom.shape
        dirs = _ACTION_DIR
        out: dict[tuple[str, str], list[float]] = {}
        succ = 1.0 if episode.success else 0.0
        n_turns = len(episode.turns)
        # plain Python per move: episodes are short, and this is cheaper than a dozen numpy calls each
        for ti, turn in enumerate(episode.turns):
            cells, actions = turn.cells, turn.actions
            n = min(len(actions), len(cells) - 1)
            fatal_last = ti == n_turns - 1 and n == len(actions) and turn.terminated and episode.outcome == "failure"
            for ai in range(n):
                action = actions[ai]
                d = dirs.get(action)
                if d is None:
                    d = dirs[action] = _DIR_ORDER.index(action.strip().lower()) \
                        if action.strip().lower() in DIRECTIONS else -1
                if d < 0:
                    continue
                a, b = cells[ai], cells[ai + 1]
                r, c = int(a[0]), int(a[1])
                tile = TILES[table[d][min(max(r, 0), h - 1)][min(max(c, 0), w - 1)]]
                failed = (fatal_last and ai == n - 1) or (r == int(b[0]) and c == int(b[1]))
                v = out.get((tile, action))
                if v is None:
                    v = out[(tile, action)] = [0.0, 0.0, 0.0]
                v[0] += 1.0
                v[1] += failed
                v[2] += succ
        return out

    @staticmethod
    def batch_counts(
        items: list[tuple[Any, LevelGeometry | None]], walk: BatchWalk | None = None,
    ) -> dict[str, dict[tuple[str, str], list[float]]]:
        """:meth:`counts` of a batch of (episode, geometry), summed per env (episodes without a geometry
        are skipped): numpy over every move of the batch at once, from one :func:`walk_batch` (pass
        ``walk`` = the walk of exactly these episodes to reuse it). The same integer counts."""
        if walk is None:
            walk = walk_batch([ep for ep, _ in items])
        if not walk.ok or len(walk.moves) != len(items):  # unusual cells: the per-episode path
            out: dict[str, dict[tuple[str, str], list[float]]] = {}
            for episode, geom in items:
                if geom is None:
                    continue
                d = out.setdefault(str(episode.env_name), {})
                for k, v in SkillMiner.counts(episode, geom).items():
                    acc = d.setdefault(k, [0.0, 0.0, 0.0])
                    for i in range(3):
                        acc[i] += v[i]
            return out
        if not walk.actions:
            return {}
        geo_of: dict[int, int] = {}
        geoms: list[LevelGeometry] = []
        envs: dict[str, int] = {}
        ep_geo, ep_env, ep_succ = [], [], []
        for episode, geom in items:
            if geom is None:
                ep_geo.append(-1)
            else:
                g = geo_of.get(id(geom))
                if g is None:
                    g = geo_of[id(geom)] = len(geoms)
                    geoms.append(geom)
                ep_geo.append(g)
            ep_env.append(envs.setdefault(str(episode.env_name), len(envs)))
            ep_succ.append(1.0 if episode.success else 0.0)
        if not geoms:
            return {}
        names: dict[str, int] = {}
        act_id = np.fromiter((names.setdefault(x, len(names)) for x in walk.actions), dtype=np.int64,
                             count=len(walk.actions))
        dirs = _ACTION_DIR
        for x in names:
            if x not in dirs:
                dirs[x] = _DIR_ORDER.index(x.strip().lower()) if x.strip().lower() in DIRECTIONS else -1
        d = np.asarray([dirs[x] for x in names], dtype=np.int64)[act_id]
        ep_of = np.repeat(np.arange(len(items)), walk.moves)
        geo = np.asarray(ep_geo)[ep_of]
        keep = (d >= 0) & (geo >= 0)
        a, b = walk.before[walk.move_at], walk.cells[walk.move_at]
        failed = (a[:, 0] == b[:, 0]) & (a[:, 1] == b[:, 1])
        if walk.fatal:
            failed[walk.fatal] = True
        if len(geoms) == 1:
            h, w = geoms[0].shape
            flat, off = tile_table(geoms[0]).reshape(-1), 0
        else:
            shapes = np.asarray([gm.shape for gm in geoms], dtype=np.int64)  # G×2
            sizes = 4 * shapes[:, 0] * shapes[:, 1]
            offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
            flat = np.concatenate([tile_table(gm).reshape(-1) for gm in geoms])
            gk = np.maximum(geo, 0)
            h, w, off = shapes[gk, 0], shapes[gk, 1], offsets[gk]
        r = np.minimum(np.maximum(a[:, 0], 0), h - 1)
        c = np.minimum(np.maximum(a[:, 1], 0), w - 1)
        tile = flat[off + ((np.maximum(d, 0) * h + r) * w + c)]
        n_act = len(names)
        key = ((np.asarray(ep_env)[ep_of] * len(TILES) + tile) * n_act + act_id)[keep]
        uniq, inv = np.unique(key, return_inverse=True)
        n = np.bincount(inv, minlength=len(uniq)).tolist()
        f = np.bincount(inv, weights=failed[keep], minlength=len(uniq)).tolist()
        sc = np.bincount(inv, weights=np.asarray(ep_succ)[ep_of][keep], minlength=len(uniq)).tolist()
        env_names, act_names = list(envs), list(names)
        result: dict[str, dict[tuple[str, str], list[float]]] = {}
        for j, k in enumerate(uniq.tolist()):
            rest, ai = divmod(k, n_act)
            e, t = divmod(rest, len(TILES))
            result.setdefault(env_names[e], {})[(TILES[t], act_names[ai])] = [float(n[j]), f[j], sc[j]]
        return result

    def update(self, batch: list[tuple[str, Any]]) -> None:
        """``batch``: (env, events) per episode — a list of :meth:`events` tuples or the dict of
        :meth:`counts`. Count, vote on existing rules, then mine new ones."""
        batch_counts: dict[tuple[str, str, str], list[float]] = {}
        for env, events in batch:
            if isinstance(events, dict):
                items = [((env, tile, action), v) for (tile, action), v in events.items()]
            else:
                items = [((env, tile, action), (1.0, float(failed), float(success)))
                         for tile, action, failed, success in events]
            for k, (n, f, sc) in items:
                for table in (self.stats, batch_counts):
                    s = table.setdefault(k, [0.0, 0.0, 0.0])
                    s[0] += n
                    s[1] += f
                    s[2] += sc
        kept: list[Rule] = []
        for rule in self.rules:
            k = (rule.env, rule.tile, rule.action)
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
        for (env, tile, action), (n, f, s) in self.stats.items():
            if n < self.min_support:
                continue
            cands = [("avoid", f)]
            if tile not in ("free", "edge"):
                cands.append(("prefer", s))
            for kind, x in cands:
                conf = wilson_lower(x, n)
                if conf >= self.threshold and (env, tile, action, kind) not in have:
                    kept.append(Rule(env, tile, action, kind, int(n), x / n, conf))
                    have.add((env, tile, action, kind))
        kept.sort(key=lambda r: (r.support * r.confidence, r.env, r.tile, r.action), reverse=True)
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
        self.stats = {(str(e), str(t), str(a)): [float(n), float(f), float(s)] for e, t, a, n, f, s in d["stats"]}
        self.rules = [Rule(**r) for r in d["rules"]]
