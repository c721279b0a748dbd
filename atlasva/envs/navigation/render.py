"""First-person rendering of a navigation scene on the CPU: a vectorised 2.5-D raycaster.

A frame is composed as an (H, W) image of packed 0x00BBGGRR uint32 words and unpacked to (H, W, 3)
uint8 at the end (one strided copy). Everything that depends only on the camera's orientation and its
position inside a grid cell — not on which cell — is tabulated once and reused by every pose that
shares it (the env's poses are cell centres, four headings, a few pitches):

* walls — per (heading, position in the cell), every column ray's crossings with the x = const and
  z = const grid lines as cell offsets, with their distances, wall offsets, and (once a table is used
  twice) their hazed wall and baseboard colours for each room. A frame shifts the offsets to its cell,
  looks all crossings up in the wall grid in one gather, keeps each family's first wall (argmax) and
  the nearer family's hit; the room in front of the hit picks the paint, the hit side shades it, panel
  seams darken it, distance hazes it;
* wall spans — a column whose wall lies at perpendicular distance d spans k = f / d pixels per metre,
  so row y shows the wall iff k exceeds a per-(pitch, row) threshold: one comparison per pixel, only on
  the rows between the nearest and the farthest wall (rows every column covers are filled whole);
* floor and ceiling — the floor pixels' cell offsets from the camera and their haze levels, per
  (heading, pitch, position in the cell), index one colour table (haze level × floor cell, checkered);
  a frame is one gather from that table shifted to its cell, skipping rows the walls cover; ceiling
  rows are a per-pitch column of colours;
* objects — camera-facing billboards with procedurally drawn sprites (one per category and colour),
  drawn far to near with a per-column depth test against the wall distances; a sprite is hazed on
  its few distinct colours, then fetched with two gathers.

"Look up/down" pitches the camera by shifting the horizon (y-shearing, the usual 2.5-D pitch).
Everything is float64/uint8 numpy with no randomness, so a frame is byte-identical in any process.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from atlasva.envs.navigation.scene import CATEGORIES, COLOURS, ROOM_TYPES, Scene

HAZE = np.array([200.0, 205.0, 215.0])
HAZE_PER_M = 0.06
FOG_LEVELS = 48
FOG_MAX_M = 16.0
CEILING = np.array([236.0, 233.0, 226.0])
SPRITE_RES = 48
BASEBOARD_M = 0.12


def _fog(dist_m: np.ndarray) -> np.ndarray:
    return np.exp(-HAZE_PER_M * np.asarray(dist_m, dtype=np.float64))


def _fog_level(dist_m: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(dist_m) * (FOG_LEVELS / FOG_MAX_M), 0, FOG_LEVELS - 1).astype(np.intp)


def _hazed(rgb: np.ndarray, dist_m: np.ndarray) -> np.ndarray:
    k = _fog(dist_m)[..., None]
    return rgb * k + HAZE * (1.0 - k)


# --------------------------------------------------------------------------- sprites


@lru_cache(maxsize=256)
def sprite(category: str, colour: str, res: int = SPRITE_RES) -> tuple[np.ndarray, np.ndarray]:
    """(rgb uint8 res×res×3, alpha bool res×res) of an object seen from the front (v = 0 at the top)."""
    if category not in CATEGORIES or colour not in COLOURS:
        raise ValueError(f"no sprite for {colour!r} {category!r}")
    v, u = (np.mgrid[0:res, 0:res].astype(np.float64) + 0.5) / res
    base = np.array(COLOURS[colour], dtype=np.float64)
    rgb = np.zeros((res, res, 3))
    a = np.zeros((res, res), dtype=bool)

    def fill(mask: np.ndarray, col: np.ndarray | tuple[float, float, float]) -> None:
        nonlocal a
        rgb[mask] = np.asarray(col, dtype=np.float64)
        a = a | mask

    def box(u0: float, u1: float, v0: float, v1: float) -> np.ndarray:
        return (u >= u0) & (u < u1) & (v >= v0) & (v < v1)

    dark = base * 0.5 + 10
    light = np.minimum(base * 1.2 + 25, 255)
    wood = np.array([110.0, 75.0, 45.0])
    grey = np.array([90.0, 90.0, 95.0])
    if category == "chair":
        fill(box(0.22, 0.78, 0.0, 0.5), base)
        fill(box(0.12, 0.88, 0.5, 0.6), light)
        fill(box(0.14, 0.22, 0.6, 1.0) | box(0.78, 0.86, 0.6, 1.0), dark)
    elif category == "table":
        fill(box(0.0, 1.0, 0.0, 0.12), base)
        fill(box(0.04, 0.96, 0.12, 0.2), dark)
        fill(box(0.06, 0.14, 0.2, 1.0) | box(0.86, 0.94, 0.2, 1.0), dark)
    elif category == "sofa":
        fill(box(0.06, 0.94, 0.0, 0.55), base)
        fill(box(0.1, 0.9, 0.55, 0.88), light)
        fill(box(0.0, 0.14, 0.3, 0.9) | box(0.86, 1.0, 0.3, 0.9), dark)
        fill(box(0.06, 0.12, 0.9, 1.0) | box(0.88, 0.94, 0.9, 1.0), grey)
    elif category == "bed":
        fill(box(0.0, 1.0, 0.0, 0.4), wood)
        fill(box(0.02, 0.98, 0.4, 0.6), (240.0, 240.0, 235.0))
        fill(box(0.02, 0.98, 0.5, 0.88), base)
        fill(box(0.03, 0.1, 0.88, 1.0) | box(0.9, 0.97, 0.88, 1.0), wood)
    elif category == "lamp":
        half = 0.22 + 0.22 * (v / 0.3)
        fill((v < 0.3) & (np.abs(u - 0.5) < half), base)
        fill(box(0.47, 0.53, 0.3, 0.95), grey)
        fill(box(0.3, 0.7, 0.93, 1.0), grey * 0.7)
    elif category == "plant":
        leaves = ((u - 0.5) / 0.46) ** 2 + ((v - 0.36) / 0.34) ** 2 <= 1.0
        shade = 0.75 + 0.25 * np.sin(u * 23.0) * np.cos(v * 17.0)
        rgb[leaves] = (np.array([45.0, 140.0, 55.0]) * shade[..., None])[leaves]
        a = a | leaves
        fill((v >= 0.66) & (np.abs(u - 0.5) < 0.3 - 0.1 * (v - 0.66) / 0.34), base)
    elif category == "tv":
        fill(box(0.0, 1.0, 0.05, 0.65), base)
        fill(box(0.05, 0.95, 0.1, 0.6), (25.0, 30.0, 45.0))
        fill(box(0.45, 0.55, 0.65, 0.9), grey)
        fill(box(0.25, 0.75, 0.9, 1.0), base)
    elif category == "fridge":
        fill(box(0.04, 0.96, 0.0, 1.0), base)
        fill(box(0.04, 0.96, 0.34, 0.37), dark)
        fill(box(0.8, 0.86, 0.12, 0.3) | box(0.8, 0.86, 0.42, 0.7), (200.0, 200.0, 205.0))
    elif category == "bookshelf":
        fill(box(0.0, 1.0, 0.0, 1.0), base)
        inside = box(0.07, 0.93, 0.04, 0.96) & (np.abs(((v - 0.04) / 0.92 * 4) % 1.0 - 0.5) < 0.45)
        spines = np.floor(u * 14).astype(np.int64)
        palette = np.array([[180, 50, 50], [50, 90, 170], [60, 140, 70], [210, 180, 60], [120, 70, 140], [230, 230, 220]])
        book_rgb = palette[(spines * 7 + np.floor(v * 4).astype(np.int64) * 3) % len(palette)].astype(np.float64)
        tall = ((v - 0.04) / 0.92 * 4) % 1.0 > 0.2 + 0.15 * ((spines * 5) % 3) / 2
        books = inside & tall
        rgb[inside] = (dark * 0.5)
        rgb[books] = book_rgb[books]
    elif category == "cabinet":
        fill(box(0.02, 0.98, 0.0, 0.95), base)
        fill(box(0.02, 0.98, 0.31, 0.34) | box(0.02, 0.98, 0.63, 0.66), dark)
        fill(box(0.46, 0.54, 0.14, 0.2) | box(0.46, 0.54, 0.46, 0.52) | box(0.46, 0.54, 0.78, 0.84), grey)
        fill(box(0.05, 0.12, 0.95, 1.0) | box(0.88, 0.95, 0.95, 1.0), dark)
    elif category == "vase":
        half = np.where(v < 0.6, 0.12 + 0.32 * np.sin(np.pi * v / 1.2), 0.44 - 0.2 * (v - 0.6) / 0.4)
        fill(np.abs(u - 0.5) < half, base)
        fill(box(0.36, 0.64, 0.0, 0.05), dark)
    else:  # pragma: no cover - CATEGORIES and this drawer are kept in sync
        fill(box(0.0, 1.0, 0.0, 1.0), base)
    shade = 1.08 - 0.2 * u  # light from the left
    out = np.clip(rgb * shade[..., None], 0, 255).round().astype(np.uint8)
    return out, a


# --------------------------------------------------------------------------- packed colours

_BYTES = np.array([1.0, 256.0, 65536.0])


def _pack32(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) colours -> (...) uint32 words 0x00BBGGRR (a pixel's three bytes in memory order on a
    little-endian machine), rounded half to even like ``ndarray.round``."""
    return (np.rint(np.clip(rgb, 0, 255)) @ _BYTES).astype(np.uint32)


def _wall_words(col: np.ndarray, fog: np.ndarray) -> np.ndarray:
    """Packed (wall, baseboard) colours of wall colours ``col`` (..., 3) hazed by ``fog`` (broadcast)."""
    haze = HAZE * (1.0 - fog)
    rgb = np.empty((2, *col.shape))
    np.multiply(col, fog, out=rgb[0])
    rgb[0] += haze
    np.multiply(col, 0.55, out=rgb[1])  # baseboard
    rgb[1] *= fog
    rgb[1] += haze
    np.rint(rgb, out=rgb)  # in [0, 255] already: between a wall colour and the haze
    return (rgb @ _BYTES).astype(np.uint32)


def _rgb_safe(img32: np.ndarray) -> np.ndarray:
    return img32.view(np.uint8).reshape(*img32.shape, 4)[..., :3].copy()


def _rgb_fast(img32: np.ndarray) -> np.ndarray:
    """(H, W) packed words -> contiguous (H, W, 3) uint8 with one strided copy: word i is stored at byte
    3*i of the output and its spare top byte is overwritten by word i + 1 (the last one's by a spare
    byte past the end). Several times faster than a (..., 3)-uint8 or 3-byte-void copy or gather."""
    h, w = img32.shape
    buf = np.empty(3 * h * w + 1, dtype=np.uint8)
    np.ndarray((h, w), dtype=np.uint32, buffer=buf, strides=(3 * w, 3))[...] = img32
    return buf[:-1].reshape(h, w, 3)


def _pick_rgb() -> Callable[[np.ndarray], np.ndarray]:
    """_rgb_fast needs a little-endian machine and a strided copy that runs in increasing address
    order; check that once against the plain copy, else use the plain copy."""
    probe = (np.arange(37 * 53, dtype=np.uint64) * 2654435761 % 2**32).astype(np.uint32).reshape(37, 53)
    ok = np.little_endian and np.array_equal(_rgb_fast(probe), _rgb_safe(probe))
    return _rgb_fast if ok else _rgb_safe


_to_rgb = _pick_rgb()


@lru_cache(maxsize=256)
def _sprite_palette(category: str, colour: str) -> tuple[np.ndarray, np.ndarray]:
    """The sprite as (res × res+1 texel -> colour index; its distinct colours as float (m, 3)), where
    index m is transparent, as is the extra last column: hazing a frame's sprite then costs m colours,
    not res² texels."""
    rgb, alpha = sprite(category, colour)
    res = rgb.shape[0]
    colours, inverse = np.unique(rgb.reshape(-1, 3), axis=0, return_inverse=True)
    index = np.full((res, res + 1), len(colours), dtype=np.intp)
    index[:, :res] = np.where(alpha, inverse.reshape(res, res), len(colours))
    return index, colours.astype(np.float64)


# --------------------------------------------------------------------------- raycaster


@dataclass
class _PoseTable:
    """What a frame needs that depends only on (heading, pitch, position inside the cell)."""

    horizon: float
    n_ceiling: int  # rows [0, n_ceiling) lie above the horizon (ceiling side), the rest below (floor side)
    ceiling: np.ndarray  # (n_ceiling, 1) uint32 packed colour of each ceiling row
    floor_idx: np.ndarray  # (H - n_ceiling, W) intp index into Raycaster.floor_lut, less the pose's cell
    # A column whose wall lies at perpendicular distance d shows it at k = f / d pixels per metre: row y
    # (centre yc) is wall iff -(wall_h - cam_h) k <= yc - horizon < cam_h k, and baseboard iff also
    # yc - horizon >= (cam_h - BASEBOARD_M) k. As thresholds on k, each ascending away from the horizon:
    up_k: np.ndarray  # (n_ceiling,) ceiling-side row n_ceiling-1-i is wall where k > up_k[i]
    base_k: np.ndarray  # (H - n_ceiling,) floor-side row i is baseboard or wall where k > base_k[i]
    wall_k: np.ndarray  # (H - n_ceiling,) ... and wall where k > wall_k[i]


def _fill(img: np.ndarray, thresh: np.ndarray, k: np.ndarray, k_range: np.ndarray, colour: np.ndarray) -> None:
    """img[i, c] = colour[c] wherever k[c] > thresh[i] (thresh ascending down img's rows): rows under every
    column's k are filled whole, rows between min(k) and max(k) through a mask, the rest left alone."""
    n_full, n_any = thresh.searchsorted(k_range).tolist()
    if n_full:
        img[:n_full] = colour
    if n_any > n_full:
        np.copyto(img[n_full:n_any], colour, where=k > thresh[n_full:n_any, None])


@dataclass
class _CastTable:
    """What casting needs that depends only on (heading, position inside the cell): every column ray's
    crossings with the two families of grid lines, x = const (index 0) and z = const (index 1), as
    offsets from the pose's cell, and what a wall hit at each crossing looks like. Per family, "across"
    is the axis its lines are constant in, "along" the other; line j is the (j+1)-th the ray crosses,
    entering the cell across + step * (j + 1). Per-crossing arrays are flat over (family, j, column)."""

    cells: np.ndarray  # (2, n, W) intp flat index of the entered cell in Raycaster.walls_flat, less the pose's
    pick: np.ndarray  # (2, W) intp flat position of (family, line 0, column)
    t: np.ndarray  # ray parameter at the crossing (= perpendicular distance, in cells)
    dist: np.ndarray  # perpendicular distance (m), at least 1e-4 cells
    k: np.ndarray  # float32 f / dist: the wall's pixels per metre
    u: np.ndarray  # offset of the crossing along the wall, in [0, 1)
    front: np.ndarray  # intp flat index (z n + x) of the cell before the crossing, less the pose's
    code: np.ndarray  # intp wall shade of the crossing less 4 × room: 2 × z side + panel seam
    fog: np.ndarray  # haze factor at the crossing's distance
    one_way: tuple[tuple[bool, bool], ...]  # per family: (every ray crosses its lines going +, every ray going -)
    uses: int = 0
    # (2, crossings × rooms) uint32 packed wall / baseboard colour of every crossing for every room in
    # front of it; tabulated once the table is used again (discrete poses), else colours are per frame
    words: np.ndarray | None = None

    def colours(self, shades: np.ndarray, hit: np.ndarray, room: np.ndarray) -> np.ndarray:
        """(2, W) packed wall and baseboard colours of the columns' hits."""
        n_rooms = len(shades) // 4
        if self.words is not None:
            return self.words.take(hit * n_rooms + room, axis=1)
        self.uses += 1
        if self.uses > 1:
            col = shades[self.code[:, None] + 4 * np.arange(n_rooms)]  # (crossings, rooms, 3)
            self.words = _wall_words(col, self.fog[:, None, None]).reshape(2, -1)
            return self.words.take(hit * n_rooms + room, axis=1)
        return _wall_words(shades.take(self.code.take(hit) + 4 * room, axis=0), self.fog.take(hit)[:, None])

    @staticmethod
    def make(rc: Raycaster, heading_deg: float, fx: float, fz: float) -> _CastTable:
        n, w = rc.size, rc.W
        a = np.radians(heading_deg)
        ray_x = np.sin(a) + np.cos(a) * rc.t
        ray_z = -np.cos(a) + np.sin(a) * rc.t
        ray_x = np.where(np.abs(ray_x) < 1e-9, 1e-9, ray_x)
        ray_z = np.where(np.abs(ray_z) < 1e-9, 1e-9, ray_z)
        ray, along_ray = np.stack([ray_x, ray_z]), np.stack([ray_z, ray_x])
        frac_across, frac_along = np.array([[fx], [fz]]), np.array([[fz], [fx]])
        pos = ray > 0
        step = np.where(pos, 1, -1).astype(np.intp)[:, None, :]
        j = np.arange(n)[None, :, None]
        t = (j + np.where(pos, 1.0 - frac_across, frac_across)[:, None, :]) / np.abs(ray)[:, None, :]
        hit = frac_along[:, :, None] + t * along_ray[:, None, :]
        # along offset of each crossing; beyond n cells it is outside the house, where only the
        # padding (all wall) matters, and every such crossing comes after the ray's true hit
        along = np.clip(np.floor(hit), -n, n).astype(np.intp)
        # walls_flat: two (3n × 3n) grids padded by n wall cells, [x, z] then [z, x]: (across + n) 3n + along + n
        m = 3 * n
        cells = (n + step * (j + 1)) * m + (n + along) + np.array([0, m * m])[:, None, None]
        back = step * j  # across offset of the cell before the crossing
        front = np.stack([along[0] * n + back[0], back[1] * n + along[1]])
        pick = np.array([[0], [n * w]]) + np.arange(w)
        dist = np.maximum(t, 1e-4) * rc.cell
        u = hit - np.floor(hit)
        code = np.array([0, 2])[:, None, None] + ((u < 0.03) | (u > 0.97))  # family = side, panel seams
        k = (rc.f / dist).astype(np.float32)
        one_way = tuple((bool(p.all()), bool((~p).all())) for p in pos)
        flat = (v.ravel() for v in (t, dist, k, u, front, code.astype(np.intp), _fog(dist)))
        return _CastTable(cells.astype(np.intp), pick, *flat, one_way)


class Raycaster:
    """Renders ``scene`` from a pose (x, z in metres, heading in degrees, pitch in degrees).

    A frame is built as (H, W) packed 0x00BBGGRR words — ceiling rows copied from a per-pitch table,
    floor pixels fetched by one gather from a (haze level × floor cell) colour table, walls and
    baseboards written per column through one threshold test per pixel, sprites on top — and unpacked
    to (H, W, 3) uint8 at the end.
    """

    def __init__(
        self,
        scene: Scene,
        width: int = 128,
        height: int = 128,
        fov_deg: float = 90.0,
        camera_height: float = 1.5,
        wall_height: float = 2.5,
    ) -> None:
        if not 10.0 <= fov_deg <= 170.0:
            raise ValueError(f"fov must be in [10, 170] degrees, got {fov_deg}")
        if width < 8 or height < 8:
            raise ValueError(f"image size must be at least 8x8, got {width}x{height}")
        if not 0.0 < camera_height < wall_height:
            raise ValueError(f"need 0 < camera_height ({camera_height}) < wall_height ({wall_height})")
        self.scene = scene
        self.W, self.H = int(width), int(height)
        self.fov = float(fov_deg)
        self.cam_h, self.wall_h = float(camera_height), float(wall_height)
        half = np.tan(np.radians(self.fov) / 2)
        self.f = (self.W / 2) / half
        self.t = ((np.arange(self.W) + 0.5) * 2 / self.W - 1) * half
        self.xc = np.arange(self.W) + 0.5
        self.yc = np.arange(self.H) + 0.5
        self.cols = np.arange(self.W)
        self.cell = scene.cell_m
        self.size = n = scene.size
        self.wall = scene.rooms < 0
        if not (self.wall[[0, -1]].all() and self.wall[:, [0, -1]].all()):
            raise ValueError("the raycaster needs a house enclosed by walls (a wall on every border cell)")
        self.room_idx = np.where(self.wall, 0, scene.rooms + 1).astype(np.intp)  # 0 = wall
        self.room_flat = self.room_idx.ravel()
        floors = np.array([(60, 60, 60)] + [ROOM_TYPES[r].floor for r in scene.room_names], dtype=np.float64)
        # floor colours: haze level × cell of the floor grid padded by P cells of "wall floor" on every
        # side (floor rays that leave the house; walls hide them), checkered by cell parity
        self.pad = p = n + 1
        self.wp = wp = n + 2 * p
        rr, cc = np.mgrid[0:wp, 0:wp]
        code = np.zeros((wp, wp), dtype=np.intp)
        code[p : p + n, p : p + n] = self.room_idx
        cell_rgb = (floors[code] * np.where((rr + cc) & 1, 0.9, 1.0)[..., None]).reshape(1, wp * wp, 3)
        dists = (np.arange(FOG_LEVELS) + 0.5) * (FOG_MAX_M / FOG_LEVELS)
        self.floor_lut = _pack32(_hazed(cell_rgb, np.broadcast_to(dists[:, None], (FOG_LEVELS, wp * wp)))).ravel()
        self.ceiling_lut = _pack32(_hazed(np.broadcast_to(CEILING, (FOG_LEVELS, 3)), dists))
        # wall casting: the wall grid as [x, z] (for the x = const lines) and as [z, x] (z = const),
        # each padded by n wall cells on every side, one after the other in one flat array
        self.walls_flat = np.concatenate([np.pad(g, n, constant_values=True).ravel() for g in (self.wall.T, self.wall)])
        wall_rgb = np.array([(150, 150, 150)] + [ROOM_TYPES[r].wall for r in scene.room_names], dtype=np.float64)
        # wall colour by (room, z side, panel seam): z sides darker, seams darker
        side, seam = np.array([1.0, 0.8]), np.array([1.0, 0.85])
        self.wall_shades = ((wall_rgb[:, None, :] * side[:, None])[:, :, None, :] * seam[:, None]).reshape(-1, 3)
        self._tables: dict[tuple[float, float, float, float], _PoseTable] = {}
        self._casts: dict[tuple[float, float, float], _CastTable] = {}
        # objects as arrays, for a vectorised depth pass
        self._obj_centres = [scene.centre(o.row, o.col) for o in scene.objects]
        self._obj_dims = [o.dims() for o in scene.objects]

    # ------------------------------------------------------------------ tables
    def _table(self, heading_deg: float, pitch_deg: float, fx: float, fz: float) -> _PoseTable:
        key = (float(heading_deg) % 360.0, float(pitch_deg), round(fx, 6), round(fz, 6))
        tab = self._tables.get(key)
        if tab is not None:
            return tab
        a = np.radians(key[0])
        dx, dz, rx, rz = np.sin(a), -np.cos(a), np.cos(a), np.sin(a)
        horizon = self.H / 2 + self.f * np.tan(np.radians(key[1]))
        dy = self.yc - horizon
        nc = int(np.searchsorted(dy, 0.0, side="right"))  # first row with dy > 0
        rowdist = self.cam_h * self.f / dy[nc:]  # forward distance of each floor row (metres)
        ray_x, ray_z = dx + rx * self.t, dz + rz * self.t
        p = self.pad
        ox = np.clip(np.floor(rowdist[:, None] * ray_x[None, :] / self.cell + key[2]), -p, p).astype(np.intp)
        oz = np.clip(np.floor(rowdist[:, None] * ray_z[None, :] / self.cell + key[3]), -p, p).astype(np.intp)
        floor_idx = _fog_level(rowdist)[:, None] * (self.wp * self.wp) + (oz + p) * self.wp + (ox + p)
        cdist = (self.wall_h - self.cam_h) * self.f / np.maximum(-dy[:nc], 1e-6)
        ceiling = self.ceiling_lut[_fog_level(cdist)][:, None]
        # k thresholds (see _PoseTable); the ceiling side's test is k >= threshold, hence the nextafter
        up_k = np.nextafter((-dy[:nc] / (self.wall_h - self.cam_h))[::-1].astype(np.float32), np.float32(-1))
        base_k = (dy[nc:] / self.cam_h).astype(np.float32)
        wall_k = (dy[nc:] / (self.cam_h - BASEBOARD_M)).astype(np.float32)
        tab = _PoseTable(float(horizon), nc, ceiling, np.ascontiguousarray(floor_idx), up_k, base_k, wall_k)
        if len(self._tables) > 64:
            self._tables.clear()
        self._tables[key] = tab
        return tab

    def _cast_table(self, heading_deg: float, fx: float, fz: float) -> _CastTable:
        key = (float(heading_deg) % 360.0, float(fx), float(fz))
        tab = self._casts.get(key)
        if tab is None:
            tab = _CastTable.make(self, *key)
            if len(self._casts) > 64:
                self._casts.clear()
            self._casts[key] = tab
        return tab

    # ------------------------------------------------------------------ walls
    def _hits(self, x: float, z: float, heading_deg: float) -> tuple[_CastTable, np.ndarray, np.ndarray, np.ndarray]:
        """(cast table, each column's hit crossing in it, z-side flag, room in front of the hit).

        Every grid-line crossing of every column's ray at once, for both families of lines (x = const
        and z = const): the cell each ray enters at each crossing (tabulated per heading and position in
        the cell, shifted to the pose's cell) is looked up in the wall grid, the first wall of each
        family kept, and the nearer of the two is the hit. A ray's forward component is 1, so its
        parameter at a crossing is the perpendicular distance."""
        px, pz = x / self.cell, z / self.cell
        ix, iz = math.floor(px), math.floor(pz)
        tab = self._cast_table(heading_deg, px - ix, pz - iz)
        n = self.size
        # lines to test: enough for every ray to reach the border wall (rays crossing a family's lines
        # going + need n - 1 - i of them, going - need i); past the border lies the padding
        lines = 1
        for (plus, minus), i in zip(tab.one_way, (ix, iz)):
            lines = max(lines, n - 1 - i if plus else i if minus else max(n - 1 - i, i))
        shift = np.array([[[ix * 3 * n + iz]], [[iz * 3 * n + ix]]])
        j = self.walls_flat[tab.cells[:, :lines] + shift].argmax(axis=1)
        pick = j * self.W  # (2, W) each family's first wall crossing
        pick += tab.pick
        tx, tz = tab.t.take(pick)
        zside = tz <= tx
        hit = np.where(zside, pick[1], pick[0])
        front = tab.front.take(hit)
        front += iz * n + ix
        return tab, hit, zside, self.room_flat.take(front)

    def cast(self, x: float, z: float, heading_deg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per column: perpendicular wall distance (m), z-side flag, hit offset along the wall, near room."""
        tab, hit, zside, room = self._hits(x, z, heading_deg)
        return tab.dist.take(hit), zside, tab.u.take(hit), room

    # ------------------------------------------------------------------ frame
    def render(self, x: float, z: float, heading_deg: float, pitch_deg: float = 0.0) -> np.ndarray:
        px, pz = x / self.cell, z / self.cell
        ix, iz = math.floor(px), math.floor(pz)
        tab = self._table(heading_deg, pitch_deg, px - ix, pz - iz)
        nc = tab.n_ceiling
        walls, hit, _, room = self._hits(x, z, heading_deg)
        wall32, base32 = walls.colours(self.wall_shades, hit, room)
        k = walls.k.take(hit)
        k_range = np.array([k.min(), k.max()])
        img = np.empty((self.H, self.W), dtype=np.uint32)
        img[:nc] = tab.ceiling
        # floor: one gather from the colour table shifted to the pose's cell, skipping the rows that
        # the walls cover in every column
        lo = nc + int(tab.base_k.searchsorted(k_range[0]))
        np.take(self.floor_lut[iz * self.wp + ix :], tab.floor_idx[lo - nc :], out=img[lo:], mode="clip")
        _fill(img[nc - 1 :: -1] if nc else img[:0], tab.up_k, k, k_range, wall32)
        _fill(img[nc:], tab.base_k, k, k_range, base32)
        _fill(img[nc:], tab.wall_k, k, k_range, wall32)
        self._sprites(img, x, z, heading_deg, tab.horizon, walls.dist.take(hit))
        return _to_rgb(img)

    def _sprites(self, img: np.ndarray, x: float, z: float, heading_deg: float, horizon: float, zbuf: np.ndarray) -> None:
        """Camera-facing billboards, far to near, each column depth-tested against the walls."""
        a = np.radians(heading_deg)
        dx, dz, rx, rz = float(np.sin(a)), float(-np.cos(a)), float(np.cos(a)), float(np.sin(a))
        far = float(zbuf.max())
        items = []
        for o, (cx, cz), (w_m, h_m) in zip(self.scene.objects, self._obj_centres, self._obj_dims):
            depth = (cx - x) * dx + (cz - z) * dz
            if depth < 0.15 or depth >= far:  # behind the camera, or behind every wall in view
                continue
            lat = (cx - x) * rx + (cz - z) * rz
            sw = self.f * w_m / depth
            left = self.W / 2 + self.f * lat / depth - sw / 2
            if left + sw > 0 and left < self.W:
                items.append((-depth, lat, left, sw, h_m, o))
        items.sort(key=lambda it: (it[0], it[1]))  # far to near (ties: left to right)
        W, H = self.W, self.H
        for neg_depth, _, left, sw, h_m, o in items:
            depth = -neg_depth
            sh = self.f * h_m / depth
            bottom = horizon + self.cam_h * self.f / depth
            top = bottom - sh
            c0, c1 = max(0, math.ceil(left - 0.5)), min(W, math.floor(left + sw - 0.5) + 1)
            r0, r1 = max(0, math.ceil(top - 0.5)), min(H, math.floor(bottom - 0.5) + 1)
            if c0 >= c1 or r0 >= r1:
                continue
            vis = zbuf[c0:c1] > depth
            if not vis.any():
                continue
            index, colours = _sprite_palette(o.category, o.colour)
            res = index.shape[0]
            fog = _fog(depth)
            # the sprite hazed for this depth, as packed words with the alpha in the (spare) top byte
            pal = np.zeros(len(colours) + 1, dtype=np.uint32)
            pal[:-1] = (np.rint(colours * fog + HAZE * (1.0 - fog)) @ _BYTES).astype(np.uint32)  # in [0, 255]
            pal[:-1] |= np.uint32(0xFF000000)
            tex = pal.take(index)
            # texel coordinates: >= 0 as c0 + 0.5 >= left and r0 + 0.5 >= top; at most res at the far edge
            uu = np.minimum(((self.xc[c0:c1] - left) / sw * res).astype(np.intp), res - 1)
            vv = np.minimum(((self.yc[r0:r1] - top) / sh * res).astype(np.intp), res - 1)
            uu[~vis] = res  # the transparent column: hidden behind a wall
            texels = tex.take(vv, axis=0).take(uu, axis=1)
            np.copyto(img[r0:r1, c0:c1], texels, where=texels > 0xFFFFFF)


# --------------------------------------------------------------------------- top-down map


def render_map(
    scene: Scene, agent: tuple[int, int], heading: int, *, cell_px: int = 12, goal_radius: float | None = 1.0
) -> np.ndarray:
    """Top-down map (uint8): rooms, walls, objects in their colours, the target ringed, the agent as
    an arrow pointing along its heading, and the success region shaded."""
    from PIL import Image, ImageDraw

    p = int(cell_px)
    if p < 4:
        raise ValueError(f"cell_px must be >= 4, got {cell_px}")
    floors = np.array([(40, 40, 45)] + [ROOM_TYPES[r].floor for r in scene.room_names], dtype=np.float64)
    base = floors[np.where(scene.rooms < 0, 0, scene.rooms + 1)]
    base = np.where((scene.rooms >= 0)[..., None], base * 0.6 + 255 * 0.4, base)
    if goal_radius is not None:
        goal = scene.goal_cells(goal_radius)
        base[goal] = base[goal] * 0.6 + np.array([120.0, 230.0, 120.0]) * 0.4
    img = np.repeat(np.repeat(base.round().astype(np.uint8), p, axis=0), p, axis=1)
    img[::p, :] = np.minimum(img[::p, :], 215)  # faint grid lines
    img[:, ::p] = np.minimum(img[:, ::p], 215)
    pil = Image.fromarray(np.ascontiguousarray(img))
    draw = ImageDraw.Draw(pil)
    for i, o in enumerate(scene.objects):
        x0, y0 = o.col * p, o.row * p
        m = max(1, p // 6)
        draw.ellipse([x0 + m, y0 + m, x0 + p - 1 - m, y0 + p - 1 - m], fill=COLOURS[o.colour], outline=(20, 20, 20))
        if i == scene.target:
            draw.rectangle([x0, y0, x0 + p - 1, y0 + p - 1], outline=(250, 40, 200), width=max(1, p // 8))
    r, c = agent
    cx, cy = c * p + p / 2, r * p + p / 2
    dr, dc = ((-1, 0), (0, 1), (1, 0), (0, -1))[heading]
    tip = (cx + dc * p * 0.45, cy + dr * p * 0.45)
    back_l = (cx - dc * p * 0.35 - dr * p * 0.3, cy - dr * p * 0.35 + dc * p * 0.3)
    back_r = (cx - dc * p * 0.35 + dr * p * 0.3, cy - dr * p * 0.35 - dc * p * 0.3)
    draw.polygon([tip, back_l, back_r], fill=(230, 30, 30), outline=(60, 0, 0))
    return np.asarray(pil, dtype=np.uint8).copy()
