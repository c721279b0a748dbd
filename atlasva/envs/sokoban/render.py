"""Vision rendering by cached-tile blitting.

The seven tiles (wall, floor, target, box on target, box, player, player on target) are drawn once
per tile size with integer-exact numpy operations and cached at module level. A frame is one fancy
index of the tile stack with the H×W grid of tile codes plus a transpose/reshape: no per-cell Python
loop, and the same bytes in every process.
"""

from __future__ import annotations

import numpy as np

WALL, FLOOR, TARGET, BOX_ON_TARGET, BOX, PLAYER, PLAYER_ON_TARGET = range(7)
NUM_TILES = 7
#: 28 px: one Qwen2-VL / Qwen2.5-VL merged visual token (2×2 patches of 14 px) covers one cell.
DEFAULT_TILE = 28

_FLOOR_RGB = (46, 50, 58)
_GRID_RGB = (36, 39, 46)
_BRICK_RGB = (156, 78, 52)
_MORTAR_RGB = (96, 86, 80)
_TARGET_RGB = (226, 60, 60)
_BOX_RGB = (222, 164, 58)
_BOX_EDGE_RGB = (132, 88, 26)
_BOX_T_RGB = (84, 196, 96)
_BOX_T_EDGE_RGB = (30, 118, 48)
_PLAYER_RGB = (66, 140, 238)
_PLAYER_HEAD_RGB = (250, 214, 170)

_CACHE: dict[int, np.ndarray] = {}


def _coords(t: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in units of the tile (0..1), as float64 (exact for these sizes)."""
    v = (np.arange(t, dtype=np.float64) + 0.5) / t
    return np.broadcast_to(v[:, None], (t, t)), np.broadcast_to(v[None, :], (t, t))


def _floor(t: int) -> np.ndarray:
    tile = np.empty((t, t, 3), dtype=np.uint8)
    tile[:] = _FLOOR_RGB
    e = max(1, t // 28)
    tile[:e, :] = _GRID_RGB
    tile[:, :e] = _GRID_RGB
    return tile


def _wall(t: int) -> np.ndarray:
    """Bricks: four courses per tile, seams staggered by a quarter tile (integer pixel maths)."""
    py, px = np.indices((t, t))
    m = max(1, t // 14)  # mortar thickness
    course = py * 4 // t
    mortar = py - course * t // 4 < m
    stagger = np.where(course % 2 == 0, 0, t // 4)
    mortar |= (px + stagger) % max(1, t // 2) < m
    tile = np.empty((t, t, 3), dtype=np.uint8)
    tile[:] = _BRICK_RGB
    tile[mortar] = _MORTAR_RGB
    return tile


def _ring(tile: np.ndarray, t: int) -> None:
    y, x = _coords(t)
    r = np.hypot(y - 0.5, x - 0.5)
    tile[(r > 0.25) & (r < 0.36)] = _TARGET_RGB
    tile[r < 0.08] = _TARGET_RGB


def _box(tile: np.ndarray, t: int, fill: tuple[int, int, int], edge: tuple[int, int, int]) -> None:
    y, x = _coords(t)
    inside = (y > 0.1) & (y < 0.9) & (x > 0.1) & (x < 0.9)
    border = inside & ~((y > 0.2) & (y < 0.8) & (x > 0.2) & (x < 0.8))
    w = max(1.5 / t, 0.06)
    cross = inside & ((np.abs(y - x) < w) | (np.abs(y + x - 1.0) < w))
    tile[inside] = fill
    tile[border | cross] = edge


def _player(tile: np.ndarray, t: int) -> None:
    y, x = _coords(t)
    head = np.hypot(y - 0.28, x - 0.5) < 0.15
    body = (y > 0.44) & (y < 0.86) & (np.abs(x - 0.5) < 0.12 + 0.35 * (y - 0.44))
    tile[body] = _PLAYER_RGB
    tile[head] = _PLAYER_HEAD_RGB


def tiles(tile_size: int = DEFAULT_TILE) -> np.ndarray:
    """The (7, t, t, 3) uint8 tile stack for ``tile_size`` (built once, read-only)."""
    t = int(tile_size)
    cached = _CACHE.get(t)
    if cached is not None:
        return cached
    if t < 4:
        raise ValueError(f"tile_size must be >= 4 pixels, got {tile_size}")
    floor = _floor(t)
    stack = np.empty((NUM_TILES, t, t, 3), dtype=np.uint8)
    stack[WALL] = _wall(t)
    stack[FLOOR] = floor
    stack[TARGET] = floor
    _ring(stack[TARGET], t)
    stack[BOX_ON_TARGET] = floor
    _box(stack[BOX_ON_TARGET], t, _BOX_T_RGB, _BOX_T_EDGE_RGB)
    stack[BOX] = floor
    _box(stack[BOX], t, _BOX_RGB, _BOX_EDGE_RGB)
    stack[PLAYER] = floor
    _player(stack[PLAYER], t)
    stack[PLAYER_ON_TARGET] = stack[TARGET]
    _player(stack[PLAYER_ON_TARGET], t)
    stack.setflags(write=False)
    _CACHE[t] = stack
    return stack


def blit(codes: np.ndarray, tile_size: int = DEFAULT_TILE) -> np.ndarray:
    """Frame (H*t, W*t, 3) uint8 for an H×W array of tile codes."""
    stack = tiles(tile_size)
    h, w = codes.shape
    t = stack.shape[1]
    return stack[codes].transpose(0, 2, 1, 3, 4).reshape(h * t, w * t, 3)
