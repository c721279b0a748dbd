"""SkillMemory (AtlasVA): atlases + exemplars + text skills, frozen snapshots, save/load, panels.

Lifecycle (DESIGN §3)::

    snap = memory.snapshot()                        # frozen and versioned for one rollout batch
    F = snap.shaping(meta, info["cells"], terminated, gamma_turn)
    text, images = snap.inject(meta, obs, turn)     # prompt material for this observation
    memory.update(finished_episodes)                # after the batch: a new version

``meta`` is the Episode itself or a small dict ``{"env", "level_hash", "heuristics", "cell"}``
(:func:`episode_meta` builds one; ``heuristics`` = ``env.grid_heuristics()`` at reset, ``cell`` = the
agent's current cell, used only to mark the agent on the injected map).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from atlasva.formats import IMAGE_PLACEHOLDER
from atlasva.memory.atlas import (
    Atlas,
    BatchStats,
    EpisodeCells,
    LevelGeometry,
    accumulate,
    batch_episode_cells,
    level_view,
    object_cells,
    replay_boxes,
    update_atlas,
    walk_batch,
)
from atlasva.memory.exemplars import Exemplar, ExemplarBank, feature, thumbnail
from atlasva.memory.render import (
    BOX_LEGEND,
    GRASP_LEGEND,
    LEGEND,
    OVERLAY_LEGEND,
    atlas_colors,
    atlas_image,
    grasp_tint,
    overlay,
    panel,
    side_by_side,
    upsample,
)
from atlasva.memory.shaping import default_lambda, potential_grid, turn_shaping
from atlasva.memory.skills import SkillMiner

FORMAT = "atlasva.skill_memory"
FORMAT_VERSION = 2  # 2: box/grasp atlases, pattern-keyed skills
STATE_FILE = "memory.json"
ARRAYS_FILE = "arrays.safetensors"
SCOPES = ("instance", "canonical", "both")


class MemoryLoadError(ValueError):
    """A memory folder is missing, corrupted or not a SkillMemory folder."""


@dataclass
class MemoryConfig:
    enable: bool = True
    scope: str = "both"  # which atlases Φ and injection use: instance | canonical | both
    # atlases
    learn_atlases: bool = True  # False: the env's heuristics only (ablation)
    use_heuristics: bool = True
    ema: float = 0.2  # η
    ema_debias: bool = True  # rate of a cell's k-th update = max(η, 1/k)
    decay: float = 0.98  # ρ for cells unvisited in an update
    beta_a: float = 1.0  # Beta prior (a₀, b₀) of the failure rate
    beta_b: float = 3.0
    # No failure credit for a move that changed nothing (a bump into a wall) or an invalid action: such
    # moves are (pattern, action) facts for the skill miner, not cell danger. The former option (0.25 of a
    # failure at the bumping cell) made Sokoban's wall-side cells dangerous and the learned arms the worst
    # (0.00 / 0.18 vs 0.38 without it), and did not help on Sokoban or the slippery lake with the box
    # atlas either (benchmarks/README.md, memory ablation), so it is gone.
    failure_trace: float = 0.0  # credit trace^k on the k ≤ 2 cells before a terminal failure
    visit_discount: float = 0.9  # λ of v_i(c) = Σ_t λ^(T−t)·1[c_t = c]
    affinity_temperature: float = 1.0
    evidence_scale: float = 4.0  # confidence = n / (n + scale)
    heuristic_weight_end: float = 0.3  # goal-distance weight in A once evidence is plentiful
    canonical_radius: int = 12  # goal-relative grid is (2R+1)²
    max_instances: int = 2048  # instance atlases kept (least recently updated evicted)
    # shaping
    shaping: bool = True
    success_reward: float = 1.0
    shaping_lambda: float | None = None  # None: 0.1 × success_reward / max(w_A, w_D)
    w_affinity: float = 1.0
    w_danger: float = 1.0
    # ω: Φ = λ·((1−ω)·φ_agent + ω·φ_object) on levels with a box atlas (Sokoban) or a grasp atlas
    # (manipulation). Sokoban 0.75: the player's goal-distance heuristic points at the target rather than
    # behind the box; at 0.5 both the heuristics-only and the learned arms reach 0.9 success about twice as
    # late as at 0.75 (benchmarks/README.md, memory ablation)
    box_weight: float = 0.75
    grasp_weight: float = 0.5
    # exemplars
    exemplars: bool = True
    bank_size: int = 32  # per env
    dedup_bits: int = 8  # Hamming distance (of 256 bits) below which frames are duplicates
    exemplar_size: int = 96
    recency: float = 0.95
    k_failure: int = 2
    k_success: int = 1
    # text skills
    skills: bool = True
    skill_min_support: int = 10
    skill_threshold: float = 0.6
    max_skills: int = 8
    # injection
    inject_atlas: bool = True
    inject_exemplars: bool = True
    inject_skills: bool = True
    inject_every_turn: bool = False
    overlay: bool = False  # tint the observation instead of adding the atlas image
    overlay_alpha: float = 0.35
    atlas_size: int = 224

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise ValueError(f"memory scope {self.scope!r}; accepted: {SCOPES}")
        for name in ("ema", "decay", "visit_discount", "recency", "overlay_alpha", "heuristic_weight_end", "failure_trace",
                     "skill_threshold", "box_weight", "grasp_weight"):
            v = getattr(self, name)
            if not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"memory.{name} must be in [0, 1], got {v}")
        if self.ema == 0:
            raise ValueError("memory.ema must be > 0")
        for name in ("beta_a", "beta_b", "evidence_scale", "affinity_temperature"):
            if float(getattr(self, name)) <= 0:
                raise ValueError(f"memory.{name} must be > 0, got {getattr(self, name)}")
        for name in ("canonical_radius", "max_instances", "bank_size", "exemplar_size", "atlas_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"memory.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("k_failure", "k_success", "max_skills", "skill_min_support", "dedup_bits"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"memory.{name} must be >= 0, got {getattr(self, name)}")

    @property
    def lam(self) -> float:
        if self.shaping_lambda is not None:
            return float(self.shaping_lambda)
        return default_lambda(self.success_reward, self.w_affinity, self.w_danger)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MemoryConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown memory config key(s) {unknown}; accepted: {sorted(names)}")
        return cls(**d)


def episode_meta(
    env: str, level_hash: str, heuristics: dict[str, Any] | None = None, cell: list[int] | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """The small dict the rollout passes to ``MemorySnapshot.shaping`` / ``inject``."""
    return {"env": env, "level_hash": level_hash, "heuristics": heuristics or {}, "cell": cell, "seed": seed}


def _read_meta(meta: Any) -> tuple[str, str, dict[str, Any], list[int] | None]:
    if isinstance(meta, dict):
        missing = [k for k in ("env", "level_hash") if k not in meta]
        if missing:
            raise ValueError(f"episode_meta lacks {missing}; pass the Episode or episode_meta(env, level_hash, heuristics)")
        return str(meta["env"]), str(meta["level_hash"]), meta.get("heuristics") or {}, meta.get("cell")
    if hasattr(meta, "env_name") and hasattr(meta, "level_hash"):
        cells = meta.cells() if hasattr(meta, "cells") else []
        return str(meta.env_name), str(meta.level_hash), getattr(meta, "heuristics", {}) or {}, (cells[-1] if cells else None)
    raise ValueError(f"episode_meta must be an Episode or a dict with 'env' and 'level_hash'; got {type(meta).__name__}")


@dataclass
class _Instance:
    heuristics: dict[str, Any]
    geometry: LevelGeometry
    atlas: Atlas
    last_update: int
    objects: Atlas | None = None  # the level's box or grasp atlas
    object_kind: str | None = None


@dataclass(frozen=True)
class LevelView:
    """What a snapshot knows about one level: the agent layer (D, A and its part of Φ) and, on levels
    with one, the object layer (Sokoban's boxes, manipulation's grasp targets)."""

    geometry: LevelGeometry
    danger: np.ndarray
    affinity: np.ndarray
    phi: np.ndarray  # the agent layer's part of Φ over its cells
    object_kind: str | None = None
    object_danger: np.ndarray | None = None
    object_affinity: np.ndarray | None = None
    object_phi: np.ndarray | None = None  # the object layer's part of Φ over its cells
    object_seen: np.ndarray | None = None  # bool H×W: cells with learned object evidence
    cell_phi: np.ndarray | None = None  # Φ over the agent's cells (the agent part, + the grasp part)


def _cells_key(cells: Any) -> tuple[tuple[int, int], ...]:
    return tuple(sorted((int(c[0]), int(c[1])) for c in cells))


# --------------------------------------------------------------------------- snapshot


class MemorySnapshot:
    """A frozen, versioned view of the memory for one rollout batch."""

    def __init__(self, memory: SkillMemory) -> None:
        self.version = memory.version
        self.config = replace(memory.config)
        self._instances = {k: (v.geometry, v.atlas, v.objects, v.object_kind) for k, v in memory._instances.items()}
        self._canonical = dict(memory._canonical)
        self._canonical_objects = dict(memory._canonical_objects)
        self._exemplars = ExemplarBank(memory.bank.capacity, memory.bank.dedup_bits, memory.bank.recency)
        self._exemplars.items = [replace(e) for e in memory.bank.items]
        self._skills: dict[str, list[str]] = {}
        for r in memory.miner.rules:
            self._skills.setdefault(r.env, []).append(r.text())
        self._geometry: dict[tuple[str, str], LevelGeometry | None] = {}
        self._views: dict[tuple[str, str], LevelView | None] = {}
        self._base_images: dict[tuple[str, str], tuple[np.ndarray, int]] = {}
        # inject caches (a snapshot is frozen, so these never go stale): the atlas image per
        # (level, agent cell, boxes), the overlay tint per (level, frame shape), the exemplar retrieval
        # matrices per env, the finished prefix (text, memory images) per (level, cell, exemplars)
        self._atlas_images: dict[tuple[Any, ...], np.ndarray] = {}
        self._tints: dict[tuple[Any, ...], tuple[np.ndarray, np.ndarray]] = {}
        self._retrieval: dict[str, dict[str, tuple[list[Exemplar], np.ndarray, np.ndarray, np.ndarray]]] = {}
        self._prefixes: dict[tuple[Any, ...], tuple[str, tuple[np.ndarray, ...]]] = {}

    def _geom(self, env: str, level: str, heuristics: dict[str, Any]) -> LevelGeometry | None:
        key = (env, level)
        if key not in self._geometry:
            if heuristics:
                self._geometry[key] = LevelGeometry.from_heuristics(heuristics)
            elif key in self._instances:
                self._geometry[key] = self._instances[key][0]
            else:
                self._geometry[key] = None
        return self._geometry[key]

    def level_view(self, meta: Any) -> LevelView | None:
        """Both layers of the level ``meta`` names; None when nothing is known about it."""
        env, level, heuristics, _ = _read_meta(meta)
        key = (env, level)
        if key in self._views:
            return self._views[key]
        geom = self._geom(env, level, heuristics)
        out = None
        if geom is not None:
            cfg = self.config
            inst = self._instances.get(key) if cfg.scope in ("instance", "both") else None
            if inst is not None and inst[0].shape != geom.shape:
                raise ValueError(f"level {level} of {env!r}: heuristics shape {geom.shape} != stored {inst[0].shape}")
            kw = {"radius": cfg.canonical_radius, "evidence_scale": cfg.evidence_scale,
                  "heuristic_weight_end": cfg.heuristic_weight_end, "use_heuristics": cfg.use_heuristics}
            can = self._canonical.get(env) if cfg.scope in ("canonical", "both") else None
            d, a = level_view(geom, inst[1] if inst else None, can, **kw)
            kind = "box" if geom.boxes else (inst[3] if inst is not None and inst[2] is not None else None)
            if kind is None:
                phi = potential_grid(d, a, cfg.lam, cfg.w_affinity, cfg.w_danger)
                out = LevelView(geom, d, a, phi, cell_phi=phi)
            else:
                obj = inst[2] if inst is not None and inst[3] == kind else None
                can_obj = self._canonical_objects.get(env) if cfg.scope in ("canonical", "both") else None
                od, oa = level_view(geom, obj, can_obj, layer=kind, **kw)
                seen = (obj.visits > 0) if obj is not None else np.zeros(geom.shape, dtype=bool)
                w = cfg.box_weight if kind == "box" else cfg.grasp_weight
                phi = (1 - w) * potential_grid(d, a, cfg.lam, cfg.w_affinity, cfg.w_danger)
                ophi = w * potential_grid(od, oa, cfg.lam, cfg.w_affinity, cfg.w_danger)
                out = LevelView(geom, d, a, phi, kind, od, oa, ophi, seen, phi + ophi if kind == "grasp" else phi)
        self._views[key] = out
        return out

    def view(self, meta: Any) -> tuple[LevelGeometry, np.ndarray, np.ndarray, np.ndarray] | None:
        """(geometry, D, A, Φ's agent part) of the level ``meta`` names; None when nothing is known about it.
        :meth:`level_view` adds the object layer."""
        v = self.level_view(meta)
        return None if v is None else (v.geometry, v.danger, v.affinity, v.phi)

    def potential(self, meta: Any, cell: list[int], boxes: list[list[int]] | None = None) -> float:
        """Φ(s) at the agent cell ``cell`` (plus the box layer at ``boxes`` on Sokoban levels; the grasp
        layer is read at the gripper's cell, which is ``cell``)."""
        v = self.level_view(meta)
        if v is None or not (self.config.enable and self.config.shaping):
            return 0.0
        phi = float(v.cell_phi[int(cell[0]), int(cell[1])])  # type: ignore[index]
        if v.object_kind == "box" and boxes:
            phi += self._box_potential(v, boxes)
        return phi

    @staticmethod
    def _box_potential(v: LevelView, boxes: Any) -> float:
        """The box layer's Φ part: the mean of φ_box over the boxes' cells."""
        grid = v.object_phi
        assert grid is not None
        return float(np.mean([grid[int(b[0]), int(b[1])] for b in boxes])) if len(boxes) else 0.0

    def _boxes_before(self, meta: Any, v: LevelView) -> list[tuple[int, int]]:
        """The boxes' cells at the start of the turn being shaped: replayed over the Episode's cells, or
        tracked in the ``episode_meta`` dict (the start boxes at first, then each turn's replay)."""
        if isinstance(meta, dict):
            tracked = meta.get("boxes")
            return [tuple(b) for b in tracked] if tracked is not None else list(v.geometry.boxes)
        boxes, _ = replay_boxes(v.geometry.boxes, [tuple(c) for c in meta.cells()])
        return sorted(boxes)

    def shaping(self, episode_meta: Any, cells: list[list[int]], terminated: bool, gamma_turn: float) -> float:
        """F = γ_turn·Φ(s_end) − Φ(s_start) for one turn (Φ(s_end) := 0 if the turn terminated).

        Φ(s) = λ·((1−ω)·φ(c) + ω·φ_object) with φ = w_A·A − w_D·D on the agent's cell c; without an
        object layer Φ(s) = λ·φ(c). On Sokoban levels (ω = ``box_weight``) φ_object is the mean over the
        boxes of the box atlas's w_A·A − w_D·D at each box's cell; on levels with a grasp atlas
        (manipulation, ω = ``grasp_weight``) it is the grasp atlas's w_A·A − w_D·D at the gripper's cell c,
        which after a pick or place is the cell of its commanded target — where the atlas keeps that
        target's failures (D) and its part in successful attempts (A). Both are functions of the state, so
        F stays potential-based and |Φ| ≤ λ·max(w_A, w_D). Sokoban: with a dict ``episode_meta``, call
        this once per turn, in order (it keeps the boxes' cells in ``episode_meta["boxes"]``, replaying
        the player's cells)."""
        v = self.level_view(episode_meta)
        if v is None:
            return 0.0
        box_term = 0.0
        if v.object_kind == "box" and cells:
            before = self._boxes_before(episode_meta, v)
            after, _ = replay_boxes(before, cells)
            if isinstance(episode_meta, dict):
                episode_meta["boxes"] = [list(b) for b in sorted(after)]
            end = 0.0 if terminated else self._box_potential(v, sorted(after))
            box_term = float(gamma_turn) * end - self._box_potential(v, before)
        if not (self.config.enable and self.config.shaping):
            return 0.0
        return turn_shaping(v.cell_phi, cells, bool(terminated), float(gamma_turn)) + box_term  # type: ignore[arg-type]

    def skill_lines(self, env: str) -> list[str]:
        return list(self._skills.get(env, []))

    def inject(self, episode_meta: Any, obs: dict[str, Any], turn: int) -> tuple[str, list[np.ndarray]]:
        """The observation's prompt material with the memory layers prepended: (text, images) with one
        ``<image>`` in ``text`` per image, memory images first. On Sokoban levels the atlas image holds
        two maps side by side (the player's cells, then the boxes'); on levels with a grasp atlas the
        table in the observation image is tinted by it."""
        text = str(obs.get("text", ""))
        images = list(obs.get("images", ()))
        if text.count(IMAGE_PLACEHOLDER) != len(images):
            raise ValueError(
                f"observation text has {text.count(IMAGE_PLACEHOLDER)} {IMAGE_PLACEHOLDER} placeholders "
                f"but {len(images)} images"
            )
        cfg = self.config
        if not cfg.enable or (turn > 0 and not cfg.inject_every_turn):
            return text, images
        env, level, _, cell = _read_meta(episode_meta)
        key = (env, level)
        agent = (int(cell[0]), int(cell[1])) if cell is not None and len(cell) == 2 else None
        frame = images[0] if images else None
        view = self.level_view(episode_meta) if cfg.inject_atlas else None
        boxes: tuple[tuple[int, int], ...] = ()
        if view is not None and view.object_kind == "box":
            boxes = _cells_key(self._boxes_before(episode_meta, view))
        tinted = bool(view is not None and cfg.overlay and images)
        if tinted:
            images[0] = self._overlay(key, images[0], view)  # type: ignore[arg-type]
        grasp = bool(view is not None and view.object_kind == "grasp" and images and view.geometry.table_to_image is not None
                     and view.object_seen is not None and view.object_seen.any())
        if grasp:
            images[0] = self._grasp_overlay(key, images[0], view)  # type: ignore[arg-type]
        picked: tuple[Exemplar, ...] = ()
        if cfg.inject_exemplars and (cfg.k_failure or cfg.k_success):
            picked = tuple(self._retrieve(env, frame, level))
        pkey = (env, level, agent, boxes, tinted, grasp, view is not None, tuple(id(e) for e in picked))
        cached = self._prefixes.get(pkey)
        if cached is None:
            parts: list[str] = []
            mem_images: list[np.ndarray] = []
            if view is not None:
                if tinted:
                    parts.append(OVERLAY_LEGEND)
                elif not cfg.overlay or not images:
                    mem_images.append(self._atlas_image(key, view, agent, boxes))
                    parts.append(BOX_LEGEND if view.object_kind == "box" else LEGEND)
                if grasp:
                    parts.append(GRASP_LEGEND)
            for ex in picked:
                caption = ex.caption().replace(IMAGE_PLACEHOLDER, "")
                if ex.image is not None:
                    parts.append(f"Example {IMAGE_PLACEHOLDER}: {caption}.")
                    mem_images.append(ex.image)
                else:
                    parts.append(f"Example: {caption}.")
            if cfg.inject_skills:
                lines = [s.replace(IMAGE_PLACEHOLDER, "") for s in self._skills.get(env, [])]
                if lines:
                    parts.append("Skills from experience:")
                    parts.extend("- " + s for s in lines)
            cached = ("\n".join(parts) + "\n" if parts else "", tuple(mem_images))
            if len(self._prefixes) > 8192:
                self._prefixes.clear()
            self._prefixes[pkey] = cached
        prefix, mem = cached
        if not prefix:
            return text, images
        return prefix + text, list(mem) + images

    def _atlas_image(self, key: tuple[str, str], view: LevelView, agent: tuple[int, int] | None,
                     boxes: tuple[tuple[int, int], ...] = ()) -> np.ndarray:
        """The injected map for one level, agent cell (and boxes), drawn once per snapshot (read-only)."""
        ikey = (key[0], key[1], agent, boxes)
        img = self._atlas_images.get(ikey)
        if img is None:
            if key not in self._base_images:
                self._base_images[key] = upsample(atlas_colors(view.danger, view.affinity), self.config.atlas_size)
            img = atlas_image(view.danger, view.affinity, agent, view.geometry.goals, base=self._base_images[key])
            if view.object_kind == "box":
                box_map = atlas_image(view.object_danger, view.object_affinity, None, view.geometry.goals,  # type: ignore[arg-type]
                                      self.config.atlas_size, marks=boxes)
                img = side_by_side(img, box_map)
            img.setflags(write=False)
            if len(self._atlas_images) > 8192:
                self._atlas_images.clear()
            self._atlas_images[ikey] = img
        return img

    def _overlay(self, key: tuple[str, str], frame: np.ndarray, view: LevelView) -> np.ndarray:
        d, a = view.danger, view.affinity
        frame = np.asarray(frame)
        tkey = (key[0], key[1], frame.shape)
        cached = self._tints.get(tkey)
        if cached is None:
            if frame.ndim != 3 or frame.shape[2] != 3:
                return overlay(frame, d, a, self.config.overlay_alpha)  # raises the clear error
            colors = atlas_colors(d, a)
            rows = ((np.arange(frame.shape[0]) + 0.5) * d.shape[0] / frame.shape[0]).astype(np.intp)[:, None]
            cols = ((np.arange(frame.shape[1]) + 0.5) * d.shape[1] / frame.shape[1]).astype(np.intp)[None, :]
            cached = self._tints[tkey] = (self.config.overlay_alpha * colors[rows, cols].astype(np.float32),
                                          np.ones(frame.shape[:2], dtype=bool))
        tint, _ = cached
        out = (1 - self.config.overlay_alpha) * frame.astype(np.float32) + tint
        return np.clip(np.round(out), 0, 255).astype(np.uint8)

    def _grasp_overlay(self, key: tuple[str, str], frame: np.ndarray, view: LevelView) -> np.ndarray:
        """The table in the camera frame tinted by the grasp atlas (cells with evidence only), through the
        env's table-to-image homography."""
        frame = np.asarray(frame)
        tkey = ("grasp", key[0], key[1], frame.shape)
        cached = self._tints.get(tkey)
        if cached is None:
            cached = self._tints[tkey] = grasp_tint(
                frame.shape, view.geometry.table_to_image, view.object_danger, view.object_affinity,  # type: ignore[arg-type]
                view.object_seen, self.config.overlay_alpha)  # type: ignore[arg-type]
        tint, mask = cached
        out = frame.astype(np.float32)
        out[mask] = (1 - self.config.overlay_alpha) * out[mask] + tint[mask]
        return np.clip(np.round(out), 0, 255).astype(np.uint8)

    def _retrieve(self, env: str, frame: np.ndarray | None, level: str) -> list[Exemplar]:
        """ExemplarBank.retrieve with the bank's features stacked once per snapshot (one matmul)."""
        cfg = self.config
        per_kind = self._retrieval.get(env)
        if per_kind is None:
            per_kind = {}
            for kind in ("failure", "success"):
                cands = [e for e in self._exemplars.items if e.env == env and e.kind == kind]
                feats = np.stack([e.feature if e.feature is not None else np.zeros(256, np.float32) for e in cands]) \
                    if cands else np.zeros((0, 256), np.float32)
                has = np.array([e.feature is not None for e in cands], dtype=bool)
                util = np.array([e.utility(self.version, self._exemplars.recency) for e in cands])
                per_kind[kind] = (cands, feats, has, util)
            self._retrieval[env] = per_kind
        q = feature(frame) if frame is not None else None
        out: list[Exemplar] = []
        for kind, k in (("failure", cfg.k_failure), ("success", cfg.k_success)):
            cands, feats, has, util = per_kind[kind]
            if k <= 0 or not cands:
                continue
            sim = np.where(has, feats @ q, 0.0).astype(np.float64) if q is not None and len(q) == feats.shape[1] \
                else np.zeros(len(cands))
            sim += np.array([0.25 if e.level_hash == level else 0.0 for e in cands])
            order = np.lexsort((-util, -sim))
            out.extend(cands[j] for j in order[:k])
        return out


# --------------------------------------------------------------------------- memory


class SkillMemory:
    """The evolving memory. Not thread-safe; the rollout reads only snapshots."""

    def __init__(self, config: MemoryConfig | None = None) -> None:
        self.config = config if config is not None else MemoryConfig()
        if not isinstance(self.config, MemoryConfig):
            raise TypeError(f"config must be a MemoryConfig, got {type(self.config).__name__}")
        cfg = self.config
        self.version = 0
        self._instances: OrderedDict[tuple[str, str], _Instance] = OrderedDict()
        self._canonical: dict[str, Atlas] = {}
        self._canonical_objects: dict[str, Atlas] = {}  # goal-relative box atlases (Sokoban)
        self.bank = ExemplarBank(cfg.bank_size, cfg.dedup_bits, cfg.recency)
        self.miner = SkillMiner(cfg.skill_min_support, cfg.skill_threshold, cfg.max_skills)
        self._references: dict[str, tuple[str, np.ndarray]] = {}
        self.counters: dict[str, int] = {"episodes": 0, "steps": 0, "no_heuristics": 0}

    # ------------------------------------------------------------------ reading
    def snapshot(self) -> MemorySnapshot:
        return MemorySnapshot(self)

    def instance_atlas(self, env: str, level_hash: str) -> Atlas | None:
        e = self._instances.get((env, level_hash))
        return e.atlas if e else None

    def canonical_atlas(self, env: str) -> Atlas | None:
        return self._canonical.get(env)

    @property
    def exemplars(self) -> list[Exemplar]:
        return list(self.bank.items)

    def skill_lines(self, env: str) -> list[str]:
        return self.miner.lines(env)

    # ------------------------------------------------------------------ update
    def _groups(self, eps: list[Any], by_env: bool) -> list[list[int]]:
        """Index groups: by group_id when some group holds several episodes, else by level (or by env)."""
        by_id: dict[str, list[int]] = {}
        for i, ep in enumerate(eps):
            by_id.setdefault(ep.group_id or f"\0{i}", []).append(i)
        if any(len(g) > 1 for g in by_id.values()):
            return list(by_id.values())
        out: dict[tuple[str, ...], list[int]] = {}
        for i, ep in enumerate(eps):
            out.setdefault((ep.env_name,) if by_env else (ep.env_name, ep.level_hash), []).append(i)
        return list(out.values())

    def update(self, episodes: list[Any]) -> int:
        """Consume a batch of finished Episode records; returns the new version."""
        cfg = self.config
        eps = list(episodes)
        for ep in eps:
            if not hasattr(ep, "turns") or not hasattr(ep, "outcome"):
                raise TypeError(f"update() takes Episode records, got {type(ep).__name__}")
            if ep.outcome == "running":
                raise ValueError(f"episode of {ep.env_name!r} (level {ep.level_hash}) is still running; pass finished episodes")
        self.version += 1
        now = self.version
        if not cfg.enable or not eps:
            return self.version
        geoms: list[LevelGeometry | None] = []
        known: dict[tuple[str, str], LevelGeometry] = {}
        for ep in eps:
            key = (ep.env_name, ep.level_hash)
            g = known.get(key)
            if g is None and key in self._instances:  # a level hash names one level: reuse its geometry
                g = self._instances[key].geometry
            if g is None and ep.heuristics:
                g = LevelGeometry.from_heuristics(ep.heuristics)
            if g is None:
                self.counters["no_heuristics"] += 1
            else:
                known[key] = g
            geoms.append(g)
        walk = walk_batch(eps)  # one Python pass over the turns for the agent atlases
        cells: list[EpisodeCells] = batch_episode_cells(
            eps, failure_trace=cfg.failure_trace, walk=walk
        )
        self.counters["episodes"] += len(eps)
        self.counters["steps"] += sum(max(len(c.cells) - 1, 0) for c in cells)
        level_groups = [[i for i in g if geoms[i] is not None] for g in self._groups(eps, by_env=False)]
        if cfg.learn_atlases:
            objects = [object_cells(ep, g) for ep, g in zip(eps, geoms)]
            self._update_instances(eps, geoms, cells, objects, level_groups, now)
            self._update_canonical(eps, geoms, cells, objects)
        if cfg.exemplars:
            self._update_exemplars(eps, cells, now)
        if cfg.skills:
            per_env = self.miner.batch_counts(list(zip(eps, geoms)))
            self.miner.update(list(per_env.items()))
        seen_env: set[str] = set()
        for ep in reversed(eps):  # the panel's reference observation: the batch's last episode per env
            if ep.env_name not in seen_env and ep.turns and ep.turns[0].frames:
                seen_env.add(ep.env_name)
                self._references[ep.env_name] = (ep.level_hash, thumbnail(np.asarray(ep.turns[0].frames[0]), 224))
        return self.version

    def _update_kwargs(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "ema": cfg.ema, "decay": cfg.decay, "beta_prior": (cfg.beta_a, cfg.beta_b),
            "affinity_temperature": cfg.affinity_temperature, "debias": cfg.ema_debias,
        }

    @staticmethod
    def _object_groups(eps, objects, groups, kind=None):  # type: ignore[no-untyped-def]
        """The object-layer members of ``groups`` (an episode without object facts joins with no cells, so
        its outcome still counts in its group) and their kind; (None, []) when no member has any."""
        kinds = {objects[i][0] for g in groups for i in g if objects[i] is not None}
        kinds = {k for k in kinds if kind is None or k == kind}
        if len(kinds) != 1:
            return None, []
        (found,) = kinds
        none = np.zeros((0, 2), dtype=np.int64)
        return found, [[objects[i][1] if objects[i] is not None and objects[i][0] == found
                        else EpisodeCells(none, np.zeros(0), bool(eps[i].success)) for i in g] for g in groups]

    def _update_instances(self, eps, geoms, cells, objects, level_groups, now) -> None:  # type: ignore[no-untyped-def]
        cfg = self.config
        per_level: dict[tuple[str, str], list[list[int]]] = {}
        for g in level_groups:
            split: dict[tuple[str, str], list[int]] = {}
            for i in g:
                split.setdefault((eps[i].env_name, eps[i].level_hash), []).append(i)
            for key, members in split.items():
                per_level.setdefault(key, []).append(members)
        for key, groups in per_level.items():
            geom = geoms[groups[0][0]]
            assert geom is not None
            entry = self._instances.get(key)
            if entry is not None and entry.geometry.shape != geom.shape:
                raise ValueError(f"level {key[1]} of {key[0]!r} changed shape: {entry.geometry.shape} -> {geom.shape}")
            atlas = entry.atlas if entry else Atlas.empty(geom.shape)
            stats = BatchStats.zeros(geom.shape)
            accumulate(stats, [[(cells[i], None) for i in g] for g in groups], visit_discount=cfg.visit_discount)
            heur = eps[groups[0][0]].heuristics or (entry.heuristics if entry else {})
            kind, members = self._object_groups(eps, objects, groups, entry.object_kind if entry else None)
            obj_atlas, obj_kind = (entry.objects, entry.object_kind) if entry else (None, None)
            if kind is not None:
                obj_stats = BatchStats.zeros(geom.shape)
                accumulate(obj_stats, [[(ec, None) for ec in g] for g in members], visit_discount=cfg.visit_discount)
                obj_atlas = update_atlas(obj_atlas or Atlas.empty(geom.shape), obj_stats, **self._update_kwargs())
                obj_kind = kind
            self._instances[key] = _Instance(heur, geom, update_atlas(atlas, stats, **self._update_kwargs()), now,
                                             obj_atlas, obj_kind)
            self._instances.move_to_end(key)
        while len(self._instances) > cfg.max_instances:
            self._instances.popitem(last=False)

    def _update_canonical(self, eps, geoms, cells, objects) -> None:  # type: ignore[no-untyped-def]
        cfg = self.config
        r = cfg.canonical_radius
        side = 2 * r + 1
        idx = {i: geoms[i].canonical_index(r) for i in range(len(eps)) if geoms[i] is not None}
        usable = [i for i, x in idx.items() if x is not None]
        sub = [eps[i] for i in usable]
        per_env: dict[str, list[list[int]]] = {}
        for g in self._groups(sub, by_env=True):
            for env in {sub[j].env_name for j in g}:
                per_env.setdefault(env, []).append([usable[j] for j in g if sub[j].env_name == env])
        for env, groups in per_env.items():
            stats = BatchStats.zeros((side, side))
            accumulate(stats, [[(cells[i], idx[i]) for i in g] for g in groups], visit_discount=cfg.visit_discount)
            atlas = self._canonical.get(env) or Atlas.empty((side, side))
            if atlas.shape != (side, side):
                raise ValueError(f"canonical atlas of {env!r} is {atlas.shape}, config canonical_radius gives {(side, side)}")
            self._canonical[env] = update_atlas(atlas, stats, **self._update_kwargs())
            # the box layer also transfers goal-relative (boxes relative to the nearest target); grasp
            # targets do not (objects spawn anywhere): the grasp atlas is per level
            kind, members = self._object_groups(eps, objects, groups, "box")
            if kind is not None:
                obj_stats = BatchStats.zeros((side, side))
                accumulate(obj_stats, [[(ec, idx[i]) for ec, i in zip(m, g)] for m, g in zip(members, groups)],
                           visit_discount=cfg.visit_discount)
                self._canonical_objects[env] = update_atlas(
                    self._canonical_objects.get(env) or Atlas.empty((side, side)), obj_stats, **self._update_kwargs())

    def _update_exemplars(self, eps, cells, now) -> None:  # type: ignore[no-untyped-def]
        cfg = self.config

        def n_cells(i: int) -> int:  # len(ep.cells()): the walk of episode_cells when there is a start cell
            return len(cells[i].cells) if eps[i].start_cell else len(eps[i].cells())

        def key_frame(turn: Any) -> tuple[np.ndarray | None, list[int], str]:
            frame = np.asarray(turn.frames[0]) if turn.frames else None
            cell = turn.cells[-2] if len(turn.cells) >= 2 else (turn.cells[-1] if turn.cells else [])
            action = turn.actions[-1] if turn.actions else "(no action)"
            return frame, list(cell), action

        for i, ep in enumerate(eps):
            if ep.outcome == "failure" and ep.turns and ep.turns[-1].terminated:
                frame, cell, action = key_frame(ep.turns[-1])
                self.bank.add_frame("failure", ep.env_name, ep.level_hash, cell, action, frame, now,
                                    detail=ep.failure_kind or "failed", steps=n_cells(i) - 1, size=cfg.exemplar_size)
        for g in self._groups(eps, by_env=False):
            wins = [i for i in g if eps[i].success and eps[i].turns]
            if wins:
                b = min(wins, key=n_cells)
                best = eps[b]
                frame, cell, action = key_frame(best.turns[-1])
                self.bank.add_frame("success", best.env_name, best.level_hash, cell, action, frame, now,
                                    steps=n_cells(b) - 1, size=cfg.exemplar_size)

    # ------------------------------------------------------------------ persistence
    def _arrays_and_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays: dict[str, np.ndarray] = {}
        instances = []
        for i, ((env, level), e) in enumerate(self._instances.items()):
            for name, arr in e.atlas.arrays().items():
                arrays[f"instance/{i}/{name}"] = arr
            entry = {"env": env, "level_hash": level, "heuristics": e.heuristics,
                     "updates": e.atlas.updates, "last_update": e.last_update}
            if e.objects is not None:
                for name, arr in e.objects.arrays().items():
                    arrays[f"instance/{i}/object/{name}"] = arr
                entry["object"] = {"kind": e.object_kind, "updates": e.objects.updates}
            instances.append(entry)
        canonical = []
        for j, (env, atlas) in enumerate(self._canonical.items()):
            for name, arr in atlas.arrays().items():
                arrays[f"canonical/{j}/{name}"] = arr
            canonical.append({"env": env, "updates": atlas.updates})
        canonical_objects = []
        for j, (env, atlas) in enumerate(self._canonical_objects.items()):
            for name, arr in atlas.arrays().items():
                arrays[f"canonical_object/{j}/{name}"] = arr
            canonical_objects.append({"env": env, "updates": atlas.updates})
        exemplars = []
        for k, ex in enumerate(self.bank.items):
            if ex.image is not None:
                arrays[f"exemplar/{k}/image"] = ex.image
                arrays[f"exemplar/{k}/hash"] = ex.hash.astype(np.uint8)  # type: ignore[union-attr]
                arrays[f"exemplar/{k}/feature"] = ex.feature  # type: ignore[assignment]
            exemplars.append(ex.meta())
        references = []
        for j, (env, (level, frame)) in enumerate(self._references.items()):
            arrays[f"reference/{j}"] = frame
            references.append({"env": env, "level_hash": level})
        state = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "version": self.version,
            "config": asdict(self.config), "counters": dict(self.counters), "instances": instances,
            "canonical": canonical, "canonical_objects": canonical_objects, "exemplars": exemplars,
            "skills": self.miner.to_json(), "references": references,
        }
        return {k: np.ascontiguousarray(v) for k, v in arrays.items()}, state

    def save(self, directory: str | Path) -> Path:
        """Write ``memory.json`` + ``arrays.safetensors`` (no pickle); each file is replaced atomically."""
        from safetensors.numpy import save as st_save

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        arrays, state = self._arrays_and_state()
        blob = st_save(arrays, metadata={"format": FORMAT})
        state["arrays"] = {"file": ARRAYS_FILE, "sha256": hashlib.sha256(blob).hexdigest()}
        for name, data in ((ARRAYS_FILE, blob), (STATE_FILE, json.dumps(state, indent=1).encode("utf-8"))):
            tmp = d / f".{name}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, d / name)
        return d

    @classmethod
    def load(cls, directory: str | Path) -> SkillMemory:
        from safetensors.numpy import load as st_load

        d = Path(directory)
        sp, ap = d / STATE_FILE, d / ARRAYS_FILE
        if not d.is_dir():
            raise MemoryLoadError(f"no memory folder at {d}")
        if not sp.exists():
            raise MemoryLoadError(f"{d} is not a SkillMemory folder: {STATE_FILE} is missing")
        try:
            state = json.loads(sp.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MemoryLoadError(f"{sp} is corrupted (not valid JSON: {exc})") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise MemoryLoadError(f"{sp} is not a SkillMemory state (format {state.get('format') if isinstance(state, dict) else '?'!r}, expected {FORMAT!r})")
        if state.get("format_version") != FORMAT_VERSION:
            raise MemoryLoadError(f"{sp} has format_version {state.get('format_version')!r}; this atlasva reads {FORMAT_VERSION}")
        if not ap.exists():
            raise MemoryLoadError(f"{d} is incomplete: {ARRAYS_FILE} is missing")
        blob = ap.read_bytes()
        if hashlib.sha256(blob).hexdigest() != state.get("arrays", {}).get("sha256"):
            raise MemoryLoadError(f"{ap} is corrupted: its checksum does not match {STATE_FILE}")
        try:
            arrays = st_load(blob)
            mem = cls(MemoryConfig.from_dict(state["config"]))
            mem.version = int(state["version"])
            mem.counters = {str(k): int(v) for k, v in state["counters"].items()}
            for i, e in enumerate(state["instances"]):
                atlas = Atlas.from_arrays(_group(arrays, f"instance/{i}/"), e["updates"])
                geom = LevelGeometry.from_heuristics(e["heuristics"]) if e["heuristics"] else LevelGeometry.from_heuristics({"shape": list(atlas.shape)})
                obj = e.get("object")
                objects = Atlas.from_arrays(_group(arrays, f"instance/{i}/object/"), obj["updates"]) if obj else None
                mem._instances[(e["env"], e["level_hash"])] = _Instance(
                    e["heuristics"], geom, atlas, int(e["last_update"]), objects, obj["kind"] if obj else None)
            for j, e in enumerate(state["canonical"]):
                mem._canonical[e["env"]] = Atlas.from_arrays(_group(arrays, f"canonical/{j}/"), e["updates"])
            for j, e in enumerate(state.get("canonical_objects", [])):
                mem._canonical_objects[e["env"]] = Atlas.from_arrays(_group(arrays, f"canonical_object/{j}/"), e["updates"])
            for k, m in enumerate(state["exemplars"]):
                ex = Exemplar(m["kind"], m["env"], m["level_hash"], list(m["cell"]), m["action"], m["detail"],
                              int(m["steps"]), int(m["count"]), int(m["last_seen"]))
                if m["has_image"]:
                    ex.image = arrays[f"exemplar/{k}/image"]
                    ex.hash = arrays[f"exemplar/{k}/hash"].astype(bool)
                    ex.feature = arrays[f"exemplar/{k}/feature"]
                mem.bank.items.append(ex)
            mem.miner.load_json(state["skills"])
            for j, r in enumerate(state["references"]):
                mem._references[r["env"]] = (r["level_hash"], arrays[f"reference/{j}"])
        except MemoryLoadError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise MemoryLoadError(f"{d} holds an inconsistent SkillMemory state: {type(exc).__name__}: {exc}") from None
        return mem

    def state_equal(self, other: SkillMemory) -> bool:
        """True when both memories hold exactly the same state (used by tests and checkpoints)."""
        a1, s1 = self._arrays_and_state()
        a2, s2 = other._arrays_and_state()
        return s1 == s2 and a1.keys() == a2.keys() and all(
            a1[k].dtype == a2[k].dtype and np.array_equal(a1[k], a2[k]) for k in a1
        )

    # ------------------------------------------------------------------ panel
    @staticmethod
    def _object_tiles(snap: MemorySnapshot, key: tuple[str, str], lv: LevelView,
                      frame: np.ndarray | None) -> list[tuple[np.ndarray, str]]:
        """Panel tiles of a level's object layer: the box atlas and the injected two-map image
        (Sokoban), or the grasp atlas and the observation with its overlay (manipulation)."""
        if lv.object_kind is None or lv.object_danger is None or lv.object_affinity is None or lv.object_phi is None:
            return []
        geom, od, oa, ophi = lv.geometry, lv.object_danger, lv.object_affinity, lv.object_phi
        if lv.object_kind == "box":
            return [(atlas_image(od, oa, None, geom.goals, 160, marks=geom.boxes),
                     f"box atlas (boxes at start); phi part in [{ophi.min():+.3f}, {ophi.max():+.3f}]"),
                    (snap._atlas_image(key, lv, None, tuple(sorted(geom.boxes))), "injected image: player map | box map")]
        seen = lv.object_seen if lv.object_seen is not None else np.zeros(od.shape, dtype=bool)
        tiles = [(atlas_image(np.where(seen, od, 0), np.where(seen, oa, 0), None, [], 160),
                  f"grasp atlas: pick/place targets ({int(seen.sum())} cells); phi part in [{ophi.min():+.3f}, {ophi.max():+.3f}]")]
        if frame is not None and geom.table_to_image is not None and seen.any():
            tiles.append((snap._grasp_overlay(key, frame, lv), "observation with the grasp overlay (injected)"))
        return tiles

    def render_png(self, path: str | Path, env: str | None = None, level_hash: str | None = None) -> Path:
        """A PNG a person can read: per env the observation, D, A (as the agent sees them), the box or
        grasp atlas where the env has one, the canonical D and A, the top exemplars with captions, and the
        text skills."""
        snap = self.snapshot()
        envs = [env] if env else sorted({k[0] for k in self._instances} | set(self._canonical) | {e.env for e in self.bank.items})
        rows = []
        for name in envs:
            tiles: list[tuple[np.ndarray, str]] = []
            level = level_hash
            ref = self._references.get(name)
            if level is None:
                if ref is not None and (name, ref[0]) in self._instances:
                    level = ref[0]
                else:
                    levels = [k[1] for k in self._instances if k[0] == name]
                    level = levels[-1] if levels else None
            if level is not None and (name, level) in self._instances:
                inst = self._instances[(name, level)]
                if ref is not None and ref[0] == level:
                    tiles.append((ref[1], f"observation (level {level[:8]})"))
                meta = {"env": name, "level_hash": level, "heuristics": inst.heuristics}
                lv = snap.level_view(meta)
                if lv is not None:
                    geom, d, a, phi = lv.geometry, lv.danger, lv.affinity, lv.phi
                    zeros = np.zeros_like(d)
                    tiles.append((atlas_image(d, zeros, None, geom.goals, 160), "danger D (red)"))
                    tiles.append((atlas_image(zeros, a, None, geom.goals, 160), "affinity A (green)"))
                    tiles.append((atlas_image(d, a, None, geom.goals, 160), f"agent map; phi part in [{phi.min():+.3f}, {phi.max():+.3f}]"))
                    tiles.extend(self._object_tiles(snap, (name, level), lv, ref[1] if ref is not None and ref[0] == level else None))
            can = self._canonical.get(name)
            if can is not None:
                r = self.config.canonical_radius
                seen = np.argwhere(can.visits > 0)
                (r0, c0), (r1, c1) = (seen.min(0), seen.max(0) + 1) if len(seen) else ((r, r), (r + 1, r + 1))
                cd, ca = can.danger[r0:r1, c0:c1], can.affinity[r0:r1, c0:c1]
                z = np.zeros_like(cd)
                goal = [[r - r0, r - c0]]
                tiles.append((atlas_image(cd, z, None, goal, 160), "canonical D (goal-relative, seen offsets)"))
                tiles.append((atlas_image(z, ca, None, goal, 160), "canonical A (goal-relative, seen offsets)"))
            exs = sorted((e for e in self.bank.items if e.env == name and e.image is not None),
                         key=lambda e: -e.utility(self.version, self.bank.recency))[:4]
            tiles.extend((e.image, e.caption()) for e in exs)  # type: ignore[misc]
            lines = [f"version {self.version}; {self.counters['episodes']} episodes, {self.counters['steps']} steps; "
                     f"{sum(1 for k in self._instances if k[0] == name)} instance atlases; "
                     f"{sum(1 for e in self.bank.items if e.env == name)} exemplars"]
            skills = self.miner.lines(name)
            lines += ["Skills:"] + ["- " + s for s in skills] if skills else ["Skills: none mined yet"]
            rows.append({"name": name, "tiles": tiles, "lines": lines})
        if not rows:
            rows.append({"name": "empty memory", "tiles": [], "lines": ["no episodes seen yet"]})
        return panel(path, rows, f"AtlasVA skill memory (version {self.version})")


def _group(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The arrays directly under ``prefix`` (not those of a nested group such as ``object/``)."""
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix) and "/" not in k[len(prefix):]}
