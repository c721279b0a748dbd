"""Visual exemplars: key frames before failures and before decisive successes.

Selection is teacher-free: the frame shown on the last turn of a failed episode (with the action
that failed), and the frame before the final action of the *shortest* success of a group.
Exemplars are deduplicated with a 256-bit difference hash (same kind and action, Hamming distance ≤
``dedup_bits``: the duplicate's count grows instead), the bank is bounded per env and evicts the
lowest utility (failures: count × recency; successes: count × recency × brevity), and retrieval
ranks by cosine similarity of a 16×16 grey thumbnail to the current observation (+ a bonus for the
same level).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

KINDS = ("failure", "success")
FAILURE_TEXT = {
    "hole": "fell into a hole",
    "deadlock": "the box got stuck",
    "collision": "collided",
    "grasp": "the grasp failed",
}
HASH_SIDE = 16
FEATURE_SIDE = 16


_GREY = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_SUB = 2  # samples per output pixel per axis (block mean of a strided sample: fast, sees small sprites)


def _check(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"a frame must be a uint8 H×W×3 array; got {img.dtype} {img.shape}")
    return img


_INDEX: dict[tuple[int, int, int, int], np.ndarray] = {}


def _sample_index(shape: tuple[int, ...], h: int, w: int) -> np.ndarray:
    """Flat pixel indices of the (h·_SUB)×(w·_SUB) strided sample of an H×W frame (cached)."""
    key = (shape[0], shape[1], h, w)
    idx = _INDEX.get(key)
    if idx is None:
        rows = ((np.arange(h * _SUB) + 0.5) * shape[0] / (h * _SUB)).astype(np.intp)
        cols = ((np.arange(w * _SUB) + 0.5) * shape[1] / (w * _SUB)).astype(np.intp)
        if len(_INDEX) > 64:
            _INDEX.clear()
        idx = _INDEX[key] = (rows[:, None] * shape[1] + cols[None, :]).reshape(-1)
    return idx


def _grey(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(height, width) = (size[1], size[0]) grey image: block means of a strided sample (numpy only;
    the sample is one ``take`` of whole pixels through a cached flat index)."""
    img = _check(img)
    w, h = size
    idx = _sample_index(img.shape, h, w)
    pixels = img.reshape(-1, 3) if img.flags.c_contiguous else np.ascontiguousarray(img).reshape(-1, 3)
    sample = pixels.take(idx, axis=0).reshape(h * _SUB, w * _SUB, 3).astype(np.float32) @ _GREY
    return sample.reshape(h, _SUB, w, _SUB).sum(axis=(1, 3)) * (1.0 / (_SUB * _SUB))


def dhash(img: np.ndarray) -> np.ndarray:
    """256-bit difference hash (16 rows × 16 horizontal gradients) as a bool vector."""
    g = _grey(img, (HASH_SIDE + 1, HASH_SIDE))
    return (g[:, 1:] > g[:, :-1]).reshape(-1)


def feature(img: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-norm 16×16 grey thumbnail (cosine similarity = dot product)."""
    g = _grey(img, (FEATURE_SIDE, FEATURE_SIDE)).reshape(-1)
    g = g - g.mean()
    n = float(np.linalg.norm(g))
    return (g / n if n > 0 else g).astype(np.float32)


_THUMB: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray] | None] = {}


def thumbnail(img: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize to ``size``×``size`` (numpy indexing; a plain copy when the frame
    already is ``size``×``size``, whose sample indices are the identity)."""
    img = _check(img)
    key = (img.shape[0], img.shape[1], int(size))
    if key not in _THUMB:
        rows = ((np.arange(size) + 0.5) * img.shape[0] / size).astype(np.intp)
        cols = ((np.arange(size) + 0.5) * img.shape[1] / size).astype(np.intp)
        same = len(rows) == img.shape[0] and len(cols) == img.shape[1] and \
            bool((rows == np.arange(len(rows))).all() and (cols == np.arange(len(cols))).all())
        if len(_THUMB) > 64:
            _THUMB.clear()
        _THUMB[key] = None if same else (rows, cols)
    idx = _THUMB[key]
    if idx is None:
        return np.array(img, order="C", copy=True)
    return np.ascontiguousarray(img.take(idx[0], axis=0).take(idx[1], axis=1))


_FP_INDEX: dict[tuple[int, ...], np.ndarray] = {}


def fingerprint(frame: np.ndarray) -> bytes:
    """Cheap exact key of a frame: the bytes of a strided sample (every ``min(H, W) // 32``-th pixel
    per axis), read with one ``take`` through a cached flat index."""
    step = max(1, min(frame.shape[:2]) // 32)
    if not frame.flags.c_contiguous:
        return frame[::step, ::step].tobytes()
    idx = _FP_INDEX.get(frame.shape)
    if idx is None:
        if len(_FP_INDEX) > 64:
            _FP_INDEX.clear()
        idx = _FP_INDEX[frame.shape] = np.arange(frame.size, dtype=np.intp).reshape(frame.shape)[::step, ::step].reshape(-1)
    return frame.reshape(-1).take(idx).tobytes()


@dataclass
class Exemplar:
    kind: str  # failure | success
    env: str
    level_hash: str
    cell: list[int]
    action: str
    detail: str = ""  # failure kind, e.g. "hole"
    steps: int = 0  # primitive steps of the episode (successes: brevity)
    count: int = 1
    last_seen: int = 0  # memory update index
    image: np.ndarray | None = field(default=None, repr=False)
    hash: np.ndarray | None = field(default=None, repr=False)
    feature: np.ndarray | None = field(default=None, repr=False)

    def caption(self) -> str:
        where = f"({self.cell[0]},{self.cell[1]})" if len(self.cell) == 2 else "(?)"
        if self.kind == "failure":
            what = FAILURE_TEXT.get(self.detail, self.detail.replace("_", " ") or "failed")
            return f"FAILURE at {where}: {self.action} → {what}, seen {self.count}×"
        return f"SUCCESS at {where}: {self.action} → reached the goal in {self.steps} steps, seen {self.count}×"

    def utility(self, now: int, recency: float) -> float:
        r = recency ** max(now - self.last_seen, 0)
        if self.kind == "failure":
            return self.count * r
        return self.count * r / (1.0 + self.steps)

    def meta(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "env": self.env,
            "level_hash": self.level_hash,
            "cell": list(self.cell),
            "action": self.action,
            "detail": self.detail,
            "steps": self.steps,
            "count": self.count,
            "last_seen": self.last_seen,
            "has_image": self.image is not None,
        }


def make_exemplar(
    kind: str,
    env: str,
    level_hash: str,
    cell: list[int],
    action: str,
    frame: np.ndarray | None,
    *,
    detail: str = "",
    steps: int = 0,
    now: int = 0,
    size: int = 96,
) -> Exemplar:
    if kind not in KINDS:
        raise ValueError(f"exemplar kind {kind!r}; accepted: {KINDS}")
    ex = Exemplar(kind, env, level_hash, [int(x) for x in cell], action, detail, int(steps), 1, now)
    if frame is not None:
        frame = np.asarray(frame)
        ex.image, ex.hash, ex.feature = thumbnail(frame, size), dhash(frame), feature(frame)
    return ex


class ExemplarBank:
    """A bounded, deduplicated bank of exemplars per env."""

    def __init__(self, capacity: int, dedup_bits: int, recency: float) -> None:
        if capacity < 1:
            raise ValueError(f"exemplar bank capacity must be >= 1, got {capacity}")
        self.capacity, self.dedup_bits, self.recency = int(capacity), int(dedup_bits), float(recency)
        self.items: list[Exemplar] = []
        self._fingerprints: dict[bytes, np.ndarray] = {}  # cheap exact-frame key -> its dhash (speed only)

    def add_frame(
        self, kind: str, env: str, level_hash: str, cell: list[int], action: str, frame: np.ndarray | None, now: int,
        *, detail: str = "", steps: int = 0, size: int = 96,
    ) -> Exemplar:
        """Like ``add(make_exemplar(...))``, cheaper: a frame seen before gets its hash from an exact
        fingerprint of a strided sample, and the thumbnail and the retrieval feature are computed only
        when the frame becomes a new exemplar (a near-duplicate only grows the count of the old one)."""
        if kind not in KINDS:
            raise ValueError(f"exemplar kind {kind!r}; accepted: {KINDS}")
        if frame is None:
            return self.add(make_exemplar(kind, env, level_hash, cell, action, None, detail=detail, steps=steps, now=now), now)
        frame = _check(frame)
        fp = fingerprint(frame)
        h = self._fingerprints.get(fp)
        if h is None:
            h = dhash(frame)
            if len(self._fingerprints) > 16 * self.capacity:
                self._fingerprints.clear()
            self._fingerprints[fp] = h
        ex = Exemplar(kind, env, level_hash, [int(x) for x in cell], action, detail, int(steps), 1, now, hash=h)
        dup = self._duplicate(ex)
        if dup is not None:
            return self._merge(dup, ex, now)
        ex.image, ex.feature = thumbnail(frame, size), feature(frame)
        return self._insert(ex, now)

    def _duplicate(self, ex: Exemplar) -> Exemplar | None:
        for old in self.items:
            if old.kind != ex.kind or old.env != ex.env or old.action != ex.action:
                continue
            if ex.hash is not None and old.hash is not None:
                if int(np.count_nonzero(ex.hash != old.hash)) <= self.dedup_bits:
                    return old
            elif ex.hash is None and old.hash is None:
                if old.level_hash == ex.level_hash and old.cell == ex.cell:
                    return old
        return None

    def add(self, ex: Exemplar, now: int) -> Exemplar:
        """Insert (or merge into a near-duplicate: its count grows) and evict beyond capacity."""
        dup = self._duplicate(ex)
        if dup is not None:
            return self._merge(dup, ex, now)
        return self._insert(ex, now)

    @staticmethod
    def _merge(dup: Exemplar, ex: Exemplar, now: int) -> Exemplar:
        dup.count += ex.count
        dup.last_seen = now
        if ex.kind == "success" and ex.steps and (not dup.steps or ex.steps < dup.steps):
            dup.steps = ex.steps
        return dup

    def _insert(self, ex: Exemplar, now: int) -> Exemplar:
        ex = replace(ex, last_seen=now)
        self.items.append(ex)
        per_env = [e for e in self.items if e.env == ex.env]
        while len(per_env) > self.capacity:
            worst = min(per_env, key=lambda e: (e.utility(now, self.recency), e.last_seen))
            self.items.remove(worst)
            per_env.remove(worst)
        return ex

    def retrieve(
        self, env: str, image: np.ndarray | None, level_hash: str, k_failure: int, k_success: int, now: int,
        same_level_bonus: float = 0.25,
    ) -> list[Exemplar]:
        """Top-k failures and top-k successes of ``env`` by image similarity (then utility)."""
        q = feature(image) if image is not None else None
        out: list[Exemplar] = []
        for kind, k in (("failure", k_failure), ("success", k_success)):
            if k <= 0:
                continue
            cands = [e for e in self.items if e.env == env and e.kind == kind]
            if not cands:
                continue
            sim = np.array([float(q @ e.feature) if q is not None and e.feature is not None else 0.0 for e in cands])
            sim += np.array([same_level_bonus if e.level_hash == level_hash else 0.0 for e in cands])
            util = np.array([e.utility(now, self.recency) for e in cands])
            order = np.lexsort((-util, -sim))  # stable: ties keep bank order, as sort(reverse=True) does
            out.extend(cands[j] for j in order[:k])
        return out
