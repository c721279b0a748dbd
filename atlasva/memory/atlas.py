"""Danger and affinity atlases: level geometry from grid heuristics, batch statistics, EMA updates.

An :class:`Atlas` holds the *learned* part of one scope (one level = instance scope, or one env in
goal-relative coordinates = canonical scope): the EMA'd Beta-smoothed failure rate ``danger``, the
EMA'd group-relative visitation advantage ``affinity`` and the (decayed) evidence behind each. The
env's grid heuristics are blended in when a level is *viewed* (:func:`level_view`), so a hazard the
env knows about is full danger from the first turn and the goal-distance heuristic guides the agent
until learned evidence takes over.

Atlases are immutable values: an update returns new arrays, so a snapshot can keep references.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DTYPE = np.float32
LAYERS = ("agent", "box", "grasp")  # the agent's cells; Sokoban's boxes; manipulation's pick/place targets
GRASP_EVENTS = {"pick": False, "place": False, "pick_failed": True, "place_failed": True}  # kind -> failed


def _cell(c: Sequence[int]) -> tuple[int, int]:
    if len(c) != 2:
        raise ValueError(f"a cell is [row, col]; got {list(c)!r}")
    return int(c[0]), int(c[1])


@dataclass(frozen=True)
class LevelGeometry:
    """What the memory may use about a level without learning (from ``env.grid_heuristics()``)."""

    shape: tuple[int, int]
    hazard: np.ndarray  # bool H×W
    goals: tuple[tuple[int, int], ...]
    goal_distance: np.ndarray  # int H×W, -1 = unreachable
    deadlock: np.ndarray  # bool H×W (Sokoban "box_deadlock"; all False elsewhere)
    boxes: tuple[tuple[int, int], ...] = ()  # Sokoban "boxes": the start cells of the boxes
    box_distance: np.ndarray | None = None  # Sokoban "box_distance": pushes to the nearest target, -1 = never
    table_to_image: np.ndarray | None = None  # manipulation: 3×3 homography (col, row, 1) -> (x, y, 1) pixels
    _cache: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_heuristics(cls, h: dict[str, Any]) -> LevelGeometry:
        if not isinstance(h, dict) or "shape" not in h:
            raise ValueError(
                "grid heuristics must be a dict with 'shape' (and 'hazard', 'goals', 'goal_distance'); "
                f"got {type(h).__name__} with keys {sorted(h) if isinstance(h, dict) else '-'}"
            )
        shape = tuple(int(x) for x in h["shape"])
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(f"heuristics 'shape' must be [H, W] with H, W >= 1; got {h['shape']!r}")
        hh, ww = shape
        hazard = np.zeros(shape, dtype=bool)
        for c in h.get("hazard", []) or []:
            r, col = _cell(c)
            if 0 <= r < hh and 0 <= col < ww:
                hazard[r, col] = True
        deadlock = np.zeros(shape, dtype=bool)
        for c in h.get("box_deadlock", []) or []:
            r, col = _cell(c)
            if 0 <= r < hh and 0 <= col < ww:
                deadlock[r, col] = True
        goals = tuple(_cell(c) for c in (h.get("goals", []) or []))

        def grid(key: str) -> np.ndarray | None:
            if h.get(key) is None:
                return None
            arr = np.asarray(h[key], dtype=np.int64)
            if arr.shape != shape:
                raise ValueError(f"heuristics {key!r} has shape {arr.shape}, expected {shape}")
            return arr

        dist = grid("goal_distance")
        if dist is None:
            dist = np.full(shape, -1, dtype=np.int64)
        boxes = tuple(_cell(c) for c in (h.get("boxes", []) or []))
        homography = None
        if h.get("table_to_image") is not None:
            homography = np.asarray(h["table_to_image"], dtype=np.float64)
            if homography.shape != (3, 3):
                raise ValueError(f"heuristics 'table_to_image' must be a 3×3 matrix, got shape {homography.shape}")
        return cls(shape, hazard, goals, dist, deadlock, boxes, grid("box_distance"), homography)

    def contains(self, cell: Sequence[int]) -> bool:
        r, c = _cell(cell)
        return 0 <= r < self.shape[0] and 0 <= c < self.shape[1]

    def heuristic_danger(self) -> np.ndarray:
        return self.hazard.astype(DTYPE)

    def heuristic_affinity(self) -> np.ndarray:
        """1 − d/d_max on reachable cells (1 on a goal), 0 where unreachable."""
        if "h_a" not in self._cache:
            self._cache["h_a"] = self._heuristic_affinity()
        return self._cache["h_a"]

    def _heuristic_affinity(self) -> np.ndarray:
        d = self.goal_distance
        reach = d >= 0
        if not reach.any():
            return np.zeros(self.shape, dtype=DTYPE)
        dmax = max(int(d[reach].max()), 1)
        return np.where(reach, 1.0 - d / dmax, 0.0).astype(DTYPE)

    def box_heuristics(self) -> tuple[np.ndarray, np.ndarray]:
        """(h_D, h_A) of the box-level atlas: h_D = 1 on simple deadlock cells ("box_deadlock"),
        h_A = 1 − pushes/max pushes to the nearest target where a box can still reach one, 0 elsewhere."""
        if "h_box" not in self._cache:
            d = self.box_distance if self.box_distance is not None else self.goal_distance
            reach = d >= 0
            dmax = max(int(d[reach].max()), 1) if reach.any() else 1
            h_a = np.where(reach, 1.0 - d / dmax, 0.0).astype(DTYPE)
            self._cache["h_box"] = (self.deadlock.astype(DTYPE), h_a)
        return self._cache["h_box"]

    def canonical_index(self, radius: int) -> tuple[np.ndarray, np.ndarray] | None:
        """For every cell, its index in the (2R+1)² goal-relative grid (offset to the nearest goal by
        Manhattan distance, first goal on ties; offsets beyond R are clipped). None without goals."""
        if not self.goals:
            return None
        if ("canonical", radius) in self._cache:
            return self._cache[("canonical", radius)]
        rr, cc = np.mgrid[0 : self.shape[0], 0 : self.shape[1]]
        goals = np.asarray(self.goals)  # G×2
        dist = np.abs(rr[None] - goals[:, 0, None, None]) + np.abs(cc[None] - goals[:, 1, None, None])
        nearest = np.argmin(dist, axis=0)  # argmin picks the first goal on ties
        dr = np.clip(rr - goals[nearest, 0], -radius, radius) + radius
        dc = np.clip(cc - goals[nearest, 1], -radius, radius) + radius
        self._cache[("canonical", radius)] = (dr, dc)
        return dr, dc


@dataclass(frozen=True)
class Atlas:
    """The learned part of one scope. ``visits``/``evidence`` are decayed counts (confidence)."""

    danger: np.ndarray
    affinity: np.ndarray
    visits: np.ndarray
    evidence: np.ndarray
    d_updates: np.ndarray  # per-cell number of EMA updates (for the debiased EMA)
    a_updates: np.ndarray
    updates: int = 0

    @classmethod
    def empty(cls, shape: tuple[int, int]) -> Atlas:
        z = np.zeros(shape, dtype=DTYPE)
        return cls(z, np.full(shape, 0.5, dtype=DTYPE), z, z, z, z, 0)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.danger.shape)  # type: ignore[return-value]

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "danger": self.danger,
            "affinity": self.affinity,
            "visits": self.visits,
            "evidence": self.evidence,
            "d_updates": self.d_updates,
            "a_updates": self.a_updates,
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], updates: int) -> Atlas:
        shapes = {k: v.shape for k, v in arrays.items()}
        if len(set(shapes.values())) != 1 or len(shapes) != 6:
            raise ValueError(f"atlas arrays must be six arrays of one shape; got {shapes}")
        return cls(**{k: np.asarray(v, dtype=DTYPE) for k, v in arrays.items()}, updates=int(updates))


@dataclass
class BatchStats:
    """Per-cell statistics of one batch for one scope grid."""

    visits: np.ndarray  # n(c)
    failures: np.ndarray  # f(c), failure credit
    adv_num: np.ndarray  # Σ_i Â_i v_i(c)
    adv_den: np.ndarray  # Σ_i v_i(c) over informative groups
    adv_count: np.ndarray  # number of episodes (in informative groups) that visited c

    @classmethod
    def zeros(cls, shape: tuple[int, int]) -> BatchStats:
        return cls(*(np.zeros(shape, dtype=np.float64) for _ in range(5)))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def update_atlas(
    atlas: Atlas,
    stats: BatchStats,
    *,
    ema: float,
    decay: float,
    beta_prior: tuple[float, float],
    affinity_temperature: float = 1.0,
    debias: bool = True,
) -> Atlas:
    """One EMA step.

    danger:   on visited cells D_batch(c) = (f + a₀)/(n + a₀ + b₀) where there is failure evidence (f > 0)
              and 0 where there is none (a cell visited safely carries no learned danger: the Beta
              prior smooths observed failure rates, it does not invent them); D ← (1−η)D + η·D_batch
              on visited cells, D ← ρ·D elsewhere.
    affinity: A_batch(c) = σ(Σ Â_i v_i(c) / Σ v_i(c) / T) where there is group evidence; A ← (1−η)A + η·A_batch.
    With ``debias`` the rate of a cell's k-th update is max(η, 1/k) (the first update sets the value;
    bias-corrected EMA), so early evidence is not shrunk towards the initial value.
    """
    a0, b0 = beta_prior
    seen = stats.visits > 0
    d_k = atlas.d_updates + seen
    rate_d = np.maximum(ema, 1.0 / np.maximum(d_k, 1)) if debias else np.full(atlas.shape, ema)
    d_hat = np.where(stats.failures > 0, (stats.failures + a0) / (stats.visits + a0 + b0), 0.0)
    danger = np.where(seen, (1 - rate_d) * atlas.danger + rate_d * d_hat, decay * atlas.danger)

    has = stats.adv_den > 0
    a_k = atlas.a_updates + has
    rate_a = np.maximum(ema, 1.0 / np.maximum(a_k, 1)) if debias else np.full(atlas.shape, ema)
    a_batch = sigmoid(np.divide(stats.adv_num, np.where(has, stats.adv_den, 1.0)) / affinity_temperature)
    affinity = np.where(has, (1 - rate_a) * atlas.affinity + rate_a * a_batch, atlas.affinity)

    return Atlas(
        danger=np.clip(danger, 0.0, 1.0).astype(DTYPE),
        affinity=np.clip(affinity, 0.0, 1.0).astype(DTYPE),
        visits=(decay * atlas.visits + stats.visits).astype(DTYPE),
        evidence=(decay * atlas.evidence + stats.adv_count).astype(DTYPE),
        d_updates=d_k.astype(DTYPE),
        a_updates=a_k.astype(DTYPE),
        updates=atlas.updates + 1,
    )


# --------------------------------------------------------------------------- episode statistics


@dataclass
class EpisodeCells:
    """The cell-level facts of one episode the atlases need (env-agnostic)."""

    cells: np.ndarray  # N×2 int: every state cell, in order, start cell first
    failure_credit: np.ndarray  # N float: failure credit at each visit
    success: bool


def _cell_array(cells: list[Any]) -> np.ndarray:
    if not cells:
        return np.zeros((0, 2), dtype=np.int64)
    try:
        arr = np.asarray(cells, dtype=np.int64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.ndim != 2 or arr.shape[1] != 2:
        bad = next((list(c) for c in cells if len(c) != 2), cells[0])
        raise ValueError(f"a cell is [row, col]; got {bad!r}")
    return arr


def _episode_visits(episode: Any) -> list[Any]:
    """Every state cell an episode visited, in order, its start cell first (``Episode.cells()``)."""
    cur: list[Any] = [episode.start_cell] if episode.start_cell else []
    for turn in episode.turns:
        tc = turn.cells
        if tc and not cur:
            cur.append(tc[0])
        if len(tc) > 1:
            cur.extend(tc[1:])
    return cur


def _failure_credit(credit: np.ndarray, last: np.ndarray, lens: np.ndarray, failure_trace: float) -> None:
    """Credit 1 on the last visit of each terminally failed episode (``last``: its index) and
    ``failure_trace``^k on the k-th visit before it (k ≤ 2, within the episode: ``lens``)."""
    credit[last] = 1.0
    if failure_trace > 0:
        for k in (1, 2):
            at = last[lens > k] - k
            credit[at] = np.maximum(credit[at], failure_trace**k)


def _failed(episode: Any) -> bool:
    return episode.outcome == "failure" and bool(episode.turns) and episode.turns[-1].terminated


def episode_cells(episode: Any, *, failure_trace: float) -> EpisodeCells:
    """Turn an Episode into visit/failure sequences.

    Failure credit: 1 on the cell where a terminal failure ended (the hole), ``failure_trace``^k on
    the k-th cell before it (k ≤ 2). A move that left the cell unchanged (a bump into a wall) or an
    invalid action is no failure of the cell: bumps are (pattern, action) facts for the skill miner.
    """
    cells = _cell_array(_episode_visits(episode))
    n = len(cells)
    credit = np.zeros(n, dtype=np.float64)
    if _failed(episode) and n:
        _failure_credit(credit, np.asarray([n - 1]), np.asarray([n]), failure_trace)
    return EpisodeCells(cells, credit, bool(episode.success))


@dataclass
class BatchWalk:
    """One Python walk over the turns of a batch: every visit, as :func:`episode_cells` builds them, as
    flat arrays for numpy."""

    cells: np.ndarray  # V×2 int: all visits, episode after episode
    bounds: np.ndarray  # E+1: episode j's visits are cells[bounds[j]:bounds[j+1]]
    ok: bool  # False: some cell is not [row, col] (callers fall back to the per-episode path)


def walk_batch(episodes: Sequence[Any]) -> BatchWalk:
    cur: list[Any] = []
    starts: list[int] = []
    for episode in episodes:
        starts.append(len(cur))
        cur.extend(_episode_visits(episode))
    total = len(cur)
    try:
        cells = np.asarray(cur, dtype=np.int64) if total else np.zeros((0, 2), dtype=np.int64)
        ok = cells.ndim == 2 and cells.shape[1] == 2
    except (TypeError, ValueError):
        cells = np.zeros((0, 2), dtype=np.int64)
        ok = False
    return BatchWalk(cells, np.asarray([*starts, total]), bool(ok))


def batch_episode_cells(
    episodes: Sequence[Any], *, failure_trace: float, walk: BatchWalk | None = None,
) -> list[EpisodeCells]:
    """:func:`episode_cells` of every episode of a batch, with the numpy work done once for the whole
    batch (the same arrays, as views of one concatenated array)."""
    if walk is None:
        walk = walk_batch(episodes)
    if not walk.ok:  # a malformed cell somewhere: the per-episode path names it
        return [episode_cells(ep, failure_trace=failure_trace) for ep in episodes]
    cells, bounds = walk.cells, walk.bounds
    lens = np.diff(bounds)
    credit = np.zeros(len(cells), dtype=np.float64)
    fails = [j for j, ep in enumerate(episodes) if _failed(ep) and lens[j]]
    if fails:
        _failure_credit(credit, bounds[1:][fails] - 1, lens[fails], failure_trace)
    return [EpisodeCells(cells[a:b], credit[a:b], bool(ep.success))
            for ep, a, b in zip(episodes, bounds[:-1].tolist(), bounds[1:].tolist())]


# --------------------------------------------------------------------------- object layers (boxes, grasps)


def turn_events(turn: Any) -> list[dict[str, Any]]:
    """The env's ``info["events"]`` of a turn (``Turn.events``; an empty list for records without them)."""
    return getattr(turn, "events", None) or []


def replay_boxes(
    boxes: Iterable[tuple[int, int]], cells: Sequence[Sequence[int]],
) -> tuple[set[tuple[int, int]], list[tuple[int, tuple[int, int], tuple[int, int]]]]:
    """Box cells after the player walks through ``cells`` (first = where it stands), by Sokoban's push
    rule: a player entering a box's cell pushed that box one cell further the same way (the env lets it
    in only then). Returns (boxes after, pushes as (move index k: cells[k] -> cells[k+1], from, to))."""
    out = set(boxes)
    pushes = []
    for k in range(len(cells) - 1):
        a, b = cells[k], cells[k + 1]
        q = (int(b[0]), int(b[1]))
        if q in out and (int(a[0]), int(a[1])) != q:
            to = (2 * q[0] - int(a[0]), 2 * q[1] - int(a[1]))
            out.remove(q)
            out.add(to)
            pushes.append((k, q, to))
    return out, pushes


def object_cells(episode: Any, geom: LevelGeometry | None) -> tuple[str, EpisodeCells] | None:
    """The object-layer facts of one episode, or None when it has no object layer.

    ``box`` (levels whose heuristics carry ``boxes``): every cell a box entered, in order, after the
    boxes' start cells, replayed from the player's cells; failure credit 1 on the cell a ``deadlock``
    event put a box on (the episode goes on). ``grasp`` (episodes with pick/place events): every
    commanded pick/place target cell, in order; failure credit 1 for ``pick_failed``/``place_failed``.
    """
    if geom is not None and geom.boxes:
        boxes = set(geom.boxes)
        visits: list[tuple[int, int]] = sorted(boxes)
        credit = [0.0] * len(visits)
        for turn in episode.turns:  # replay_boxes inlined: this loop runs once per move of every episode
            cells = turn.cells
            dead = None
            for k in range(len(cells) - 1):
                b = cells[k + 1]
                q = (int(b[0]), int(b[1]))
                if q not in boxes:
                    continue
                a = cells[k]
                if int(a[0]) == q[0] and int(a[1]) == q[1]:
                    continue
                to = (2 * q[0] - int(a[0]), 2 * q[1] - int(a[1]))
                boxes.remove(q)
                boxes.add(to)
                if dead is None:
                    dead = {int(e.get("step", -1)) for e in turn_events(turn) if e.get("kind") == "deadlock"}
                visits.append(to)
                credit.append(1.0 if k in dead else 0.0)
        return "box", EpisodeCells(_cell_array(visits), np.asarray(credit), bool(episode.success))
    targets: list[Any] = []
    credit = []
    for turn in episode.turns:
        for e in turn_events(turn):
            failed = GRASP_EVENTS.get(e.get("kind"))
            if failed is not None:
                targets.append(e["cell"])
                credit.append(1.0 if failed else 0.0)
    if not targets:
        return None
    return "grasp", EpisodeCells(_cell_array(targets), np.asarray(credit), bool(episode.success))


_ADVANTAGES: dict[tuple[bool, ...], np.ndarray | None] = {}


def _group_advantages(successes: tuple[bool, ...]) -> np.ndarray | None:
    """Group-relative advantages (r − mean)/(std + 1e-6) of 0/1 returns; None when they do not vary.
    Cached per success pattern (the same numpy arithmetic, done once per pattern)."""
    adv = _ADVANTAGES.get(successes, False)
    if adv is False:
        returns = np.array([1.0 if s else 0.0 for s in successes])
        std = float(returns.std()) if len(returns) else 0.0
        adv = (returns - returns.mean()) / (std + 1e-6) if std > 1e-8 else None
        if adv is not None:
            adv.setflags(write=False)
        if len(_ADVANTAGES) > 4096:
            _ADVANTAGES.clear()
        _ADVANTAGES[successes] = adv
    return adv  # type: ignore[return-value]


def accumulate(
    stats: BatchStats,
    groups: Iterable[list[tuple[EpisodeCells, tuple[np.ndarray, np.ndarray] | None]]],
    *,
    visit_discount: float,
) -> None:
    """Add the danger counts and the group-relative visitation advantage of ``groups`` to ``stats``.

    Each group member is (episode cells, index map) where the index map sends a level cell to this
    scope's grid (None = identity). Groups whose returns do not vary carry no affinity evidence.
    All members are flattened into one index vector and counted with ``np.bincount``.
    """
    h, w = stats.visits.shape
    size = h * w
    members: list[EpisodeCells] = []
    indices: list[tuple[np.ndarray, np.ndarray] | None] = []
    advs: list[float] = []  # NaN: the member's group carries no affinity evidence
    for group in groups:
        adv = _group_advantages(tuple(ec.success for ec, _ in group))
        for i, (ec, index) in enumerate(group):
            if len(ec.cells):
                members.append(ec)
                indices.append(index)
                advs.append(float(adv[i]) if adv is not None else float("nan"))
    if not members:
        return
    lens = np.array([len(ec.cells) for ec in members])
    cells = np.concatenate([ec.cells for ec in members])
    member = np.repeat(np.arange(len(members)), lens)
    rows, cols = cells[:, 0].copy(), cells[:, 1].copy()
    if any(ix is not None for ix in indices):  # map level cells to this scope's grid, per distinct map
        which: dict[int, int] = {}  # id(map) -> its number
        maps: list[tuple[np.ndarray, np.ndarray]] = []
        code = np.full(len(members), -1)
        for j, ix in enumerate(indices):
            if ix is not None:
                k = which.get(id(ix))
                if k is None:
                    k = which[id(ix)] = len(maps)
                    maps.append(ix)
                code[j] = k
        per_visit = code[member]
        for k, ix in enumerate(maps):
            sel = per_visit == k if len(maps) > 1 or (code < 0).any() else slice(None)
            r, c = cells[sel, 0], cells[sel, 1]
            rows[sel], cols[sel] = ix[0][r, c], ix[1][r, c]
    ok = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    if not ok.all():
        bad = cells[~ok][0].tolist()
        raise ValueError(f"cell {bad} is outside the atlas grid of shape {(h, w)}")
    flat = rows * w + cols
    stats.visits += np.bincount(flat, minlength=size).reshape(h, w)
    credit = np.concatenate([ec.failure_credit for ec in members])
    stats.failures += np.bincount(flat, weights=credit, minlength=size).reshape(h, w)
    adv_m = np.asarray(advs)
    informative = ~np.isnan(adv_m)
    if informative.any():
        sel = informative[member]
        ends = np.cumsum(lens)
        from_end = (ends[member] - 1 - np.arange(len(flat)))[sel]  # T−1−t within each member
        disc = visit_discount**from_end
        fa, mem = flat[sel], member[sel]
        stats.adv_num += np.bincount(fa, weights=adv_m[mem] * disc, minlength=size).reshape(h, w)
        stats.adv_den += np.bincount(fa, weights=disc, minlength=size).reshape(h, w)
        pairs = np.unique(mem * size + fa)  # (episode, cell) visited at least once
        stats.adv_count += np.bincount(pairs % size, minlength=size).reshape(h, w)


# --------------------------------------------------------------------------- level views


def confidence(count: np.ndarray, scale: float) -> np.ndarray:
    return count / (count + scale)


def level_view(
    geom: LevelGeometry,
    instance: Atlas | None,
    canonical: Atlas | None,
    *,
    radius: int,
    evidence_scale: float,
    heuristic_weight_end: float,
    use_heuristics: bool,
    layer: str = "agent",
) -> tuple[np.ndarray, np.ndarray]:
    """The (D, A) a level sees: learned instance and canonical evidence mixed by confidence, then

    D = max(h_D, D_learned) and A = w_h·h_A + (1−w_h)·A_learned, with the heuristic weight
    w_h = w_end + (1−w_end)·(1−confidence) annealing from 1 (no evidence) towards w_end.
    ``layer`` picks the heuristics: ``agent`` (hazards, goal distance), ``box`` (simple deadlock cells,
    push distance), ``grasp`` (none: the grasp atlas is learned only).
    """
    shape = geom.shape
    zeros = np.zeros(shape, dtype=DTYPE)
    d_i = a_i = cd_i = ca_i = zeros
    d_c = a_c = cd_c = ca_c = zeros
    if instance is not None:
        if instance.shape != shape:
            raise ValueError(f"instance atlas has shape {instance.shape} but the level is {shape}")
        d_i, a_i = instance.danger, instance.affinity
        cd_i = confidence(instance.visits, evidence_scale)
        ca_i = confidence(instance.evidence, evidence_scale)
    if canonical is not None:
        idx = geom.canonical_index(radius)
        if idx is not None:
            d_c, a_c = canonical.danger[idx], canonical.affinity[idx]
            cd_c = confidence(canonical.visits[idx], evidence_scale)
            ca_c = confidence(canonical.evidence[idx], evidence_scale)
    # danger: the stored EMA already shrinks rare evidence (Beta prior, decay); mix by confidence
    wd = np.where(cd_i + cd_c > 0, cd_i / np.maximum(cd_i + (1 - cd_i) * cd_c, 1e-9), 0.0)
    d_learned = wd * d_i + (1 - wd) * d_c
    conf_a = ca_i + (1 - ca_i) * ca_c
    a_learned = np.where(conf_a > 0, (ca_i * a_i + (1 - ca_i) * ca_c * a_c) / np.maximum(conf_a, 1e-9), 0.5)
    if layer not in LAYERS:
        raise ValueError(f"atlas layer {layer!r}; accepted: {LAYERS}")
    if use_heuristics and layer != "grasp":
        h_d, h_a = geom.box_heuristics() if layer == "box" else (geom.heuristic_danger(), geom.heuristic_affinity())
        danger = np.maximum(h_d, d_learned)
        w_h = heuristic_weight_end + (1.0 - heuristic_weight_end) * (1.0 - conf_a)
        affinity = w_h * h_a + (1 - w_h) * a_learned
    else:
        danger = d_learned
        affinity = np.where(conf_a > 0, conf_a * a_learned + (1 - conf_a) * 0.5, 0.5)
    return np.clip(danger, 0, 1).astype(DTYPE), np.clip(affinity, 0, 1).astype(DTYPE)
