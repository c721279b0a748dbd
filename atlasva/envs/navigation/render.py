"""First-person rendering of a navigation scene on the CPU: a vectorised 2.5-D raycaster.

Per frame:

* walls — one DDA ray per image column, vectorised over columns (the loop runs over grid steps,
  at most ~2×size iterations, each a handful of numpy ops on W-vectors); perpendicular distance
  gives the column's wall span, the room on the near side of the hit gives its paint colour,
  the hit side shades it, a baseboard and panel seams give it texture, distance gives haze;
* floor and ceiling — per-pixel floor casting. The offsets of every floor pixel from the camera
  depend only on (heading, pitch), so they are tabulated once per pose orientation; a frame then
  costs two adds, two casts and two gathers into a uint8 colour table (room × checker × haze);
* objects — camera-facing billboards with procedurally drawn sprites (one per category and
  colour), drawn far to near with a per-column depth test against the wall distances.

"Look up/down" pitches the camera by shifting the horizon (y-shearing, the usual 2.5-D pitch).
Everything is float64/uint8 numpy with no randomness, so a frame is byte-identical in any process.
"""

from __future__ import annotations

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


# --------------------------------------------------------------------------- raycaster


@dataclass
class _PoseTable:
    horizon: float
    n_ceiling: int  # rows [0, n_ceiling) show the ceiling, the rest the floor
    floor_flat: np.ndarray  # (nf, W) int: flat index into the padded floor-code grid, minus the pose's cell
    fog_row: np.ndarray  # (nf, 1) int32 fog level of each floor row
    ceiling_idx: np.ndarray  # (nc, W) int32 palette index of each ceiling pixel


def _pack(rgb: np.ndarray) -> np.ndarray:
    """(N, 3) colours -> N three-byte words, so one gather fetches a whole pixel."""
    return np.ascontiguousarray(np.clip(rgb, 0, 255).round().astype(np.uint8)).view("V3").ravel()


class Raycaster:
    """Renders ``scene`` from a pose (x, z in metres, heading in degrees, pitch in degrees).

    Pixels are composed as indices into a palette of packed 3-byte colours — floor colours (room ×
    checker × haze level), ceiling colours (haze level) and this frame's wall colours (per column,
    wall and baseboard) — then fetched with one gather; sprites are drawn on top.
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
        self.yc = np.arange(self.H) + 0.5
        self.yi = np.arange(self.H, dtype=np.int32)[:, None]
        self.cell = scene.cell_m
        self.size = n = scene.size
        self.wall = scene.rooms < 0
        self.room_idx = np.where(self.wall, 0, scene.rooms + 1).astype(np.intp)  # 0 = wall
        n_rooms = len(scene.room_names)
        floors = np.array([(60, 60, 60)] + [ROOM_TYPES[r].floor for r in scene.room_names], dtype=np.float64)
        self.walls_rgb = np.array([(150, 150, 150)] + [ROOM_TYPES[r].wall for r in scene.room_names], dtype=np.float64)
        # palette: floor colours indexed by ((room * 2 + checker) * FOG_LEVELS + fog level), then the ceiling
        checker = np.array([1.0, 0.9])
        dists = (np.arange(FOG_LEVELS) + 0.5) * (FOG_MAX_M / FOG_LEVELS)
        lut = floors[:, None, None, :] * checker[None, :, None, None]
        lut = _hazed(lut, np.broadcast_to(dists[None, None, :], (n_rooms + 1, 2, FOG_LEVELS)))
        ceil = _hazed(np.broadcast_to(CEILING, (FOG_LEVELS, 3)), dists)
        rgb = np.concatenate([lut.reshape(-1, 3), ceil])
        self.palette = _pack(rgb)
        self.ceiling_base = (n_rooms + 1) * 2 * FOG_LEVELS
        self.wall_base = len(self.palette)
        # floor codes on a grid padded by P cells of "wall floor" on every side (rays that leave the house)
        self.pad = n + 1
        wp = n + 2 * self.pad
        rr, cc = np.mgrid[0:wp, 0:wp]
        code = np.zeros((wp, wp), dtype=np.int64)
        code[self.pad : self.pad + n, self.pad : self.pad + n] = self.room_idx
        self.floor_code = ((code * 2 + ((rr + cc) & 1)) * FOG_LEVELS).astype(np.int32).ravel()
        self.wp = wp
        self._tables: dict[tuple[float, float, float, float], _PoseTable] = {}

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
        first_floor = int(np.searchsorted(dy, 0.0, side="right"))  # first row with dy > 0
        rowdist = self.cam_h * self.f / dy[first_floor:]  # forward distance of each floor row (metres)
        ray_x, ray_z = dx + rx * self.t, dz + rz * self.t
        p = self.pad
        ox = np.clip(np.floor(rowdist[:, None] * ray_x[None, :] / self.cell + key[2]), -p, p).astype(np.int64)
        oz = np.clip(np.floor(rowdist[:, None] * ray_z[None, :] / self.cell + key[3]), -p, p).astype(np.int64)
        flat = ((oz + p) * self.wp + (ox + p)).astype(np.intp)
        fog_row = _fog_level(rowdist).astype(np.int32)[:, None]
        cdist = (self.wall_h - self.cam_h) * self.f / np.maximum(-dy[:first_floor], 1e-6)
        ceiling_idx = np.broadcast_to((self.ceiling_base + _fog_level(cdist)).astype(np.int32)[:, None], (first_floor, self.W))
        tab = _PoseTable(horizon, first_floor, flat, fog_row, np.ascontiguousarray(ceiling_idx))
        if len(self._tables) > 64:
            self._tables.clear()
        self._tables[key] = tab
        return tab

    # ------------------------------------------------------------------ walls
    def cast(self, x: float, z: float, heading_deg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per column: perpendicular wall distance (m), z-side flag, hit offset along the wall, near room."""
        a = np.radians(heading_deg)
        ray_x = np.sin(a) + np.cos(a) * self.t
        ray_z = -np.cos(a) + np.sin(a) * self.t
        ray_x = np.where(np.abs(ray_x) < 1e-9, 1e-9, ray_x)
        ray_z = np.where(np.abs(ray_z) < 1e-9, 1e-9, ray_z)
        px, pz = x / self.cell, z / self.cell
        mx = np.full(self.W, int(np.floor(px)), dtype=np.intp)
        mz = np.full(self.W, int(np.floor(pz)), dtype=np.intp)
        ddx, ddz = np.abs(1.0 / ray_x), np.abs(1.0 / ray_z)
        sx = np.where(ray_x < 0, -1, 1).astype(np.intp)
        sz = np.where(ray_z < 0, -1, 1).astype(np.intp)
        side_x = np.where(ray_x < 0, px - mx, mx + 1 - px) * ddx
        side_z = np.where(ray_z < 0, pz - mz, mz + 1 - pz) * ddz
        zside = np.zeros(self.W, dtype=bool)
        hit = np.zeros(self.W, dtype=bool)
        lim = self.size - 1
        for _ in range(4 * self.size):
            go_x = side_x < side_z
            ax = go_x & ~hit
            az = ~go_x & ~hit
            mx += sx * ax
            mz += sz * az
            side_x += ddx * ax
            side_z += ddz * az
            zside = (zside & ~ax) | az
            hit |= self.wall[mz, mx]  # the house is enclosed by walls, so indices never leave the grid
            if hit.all():
                break
        perp = np.where(zside, side_z - ddz, side_x - ddx)
        perp = np.maximum(perp, 1e-4)
        hit_along = np.where(zside, px + perp * ray_x, pz + perp * ray_z)
        u = hit_along - np.floor(hit_along)
        nr = np.clip(mz - sz * zside, 0, lim)
        nc = np.clip(mx - sx * ~zside, 0, lim)
        return perp * self.cell, zside, u, self.room_idx[nr, nc]

    # ------------------------------------------------------------------ frame
    def render(self, x: float, z: float, heading_deg: float, pitch_deg: float = 0.0) -> np.ndarray:
        px, pz = x / self.cell, z / self.cell
        ix, iz = int(np.floor(px)), int(np.floor(pz))
        tab = self._table(heading_deg, pitch_deg, px - ix, pz - iz)
        H, W = self.H, self.W
        idx = np.empty((H, W), dtype=np.int32)
        nc = tab.n_ceiling
        idx[:nc] = tab.ceiling_idx
        if nc < H:
            np.take(self.floor_code, tab.floor_flat + (iz * self.wp + ix), out=idx[nc:])
            idx[nc:] += tab.fog_row

        dist, zside, u, room = self.cast(x, z, heading_deg)
        k = self.f / dist
        top = np.ceil(tab.horizon - (self.wall_h - self.cam_h) * k - 0.5)
        bottom = np.ceil(tab.horizon + self.cam_h * k - 0.5)
        base = np.ceil(tab.horizon + (self.cam_h - BASEBOARD_M) * k - 0.5)
        col = self.walls_rgb[room] * np.where(zside, 0.8, 1.0)[:, None]
        col = col * np.where((u < 0.03) | (u > 0.97), 0.85, 1.0)[:, None]  # panel seams
        wall_rgb = np.concatenate([_hazed(col, dist), _hazed(col * 0.55, dist)])
        palette = np.concatenate([self.palette, _pack(wall_rgb)])
        lo = int(np.clip(top.min(), 0, H))
        hi = int(np.clip(bottom.max(), 0, H))
        if lo < hi:
            ys = self.yi[lo:hi]
            cols = np.arange(self.wall_base, self.wall_base + W, dtype=np.int32)
            layer = np.where(ys < base.astype(np.int32), cols, cols + W)
            mask = (ys >= top.astype(np.int32)) & (ys < bottom.astype(np.int32))
            np.copyto(idx[lo:hi], layer, where=mask)
        img = palette.take(idx).view(np.uint8).reshape(H, W, 3)
        self._sprites(img, x, z, heading_deg, tab.horizon, dist)
        return img

    def _sprites(self, img: np.ndarray, x: float, z: float, heading_deg: float, horizon: float, zbuf: np.ndarray) -> None:
        a = np.radians(heading_deg)
        dx, dz, rx, rz = np.sin(a), -np.cos(a), np.cos(a), np.sin(a)
        items = []
        for o in self.scene.objects:
            ox, oz = self.scene.centre(o.row, o.col)
            depth = (ox - x) * dx + (oz - z) * dz
            if depth < 0.15:
                continue
            items.append((depth, (ox - x) * rx + (oz - z) * rz, o))
        items.sort(key=lambda it: (-it[0], it[1]))
        for depth, lat, o in items:
            w_m, h_m = o.dims()
            sw, sh = self.f * w_m / depth, self.f * h_m / depth
            left = self.W / 2 + self.f * lat / depth - sw / 2
            bottom = horizon + self.cam_h * self.f / depth
            top = bottom - sh
            c0, c1 = max(0, int(np.ceil(left - 0.5))), min(self.W, int(np.floor(left + sw - 0.5)) + 1)
            r0, r1 = max(0, int(np.ceil(top - 0.5))), min(self.H, int(np.floor(bottom - 0.5)) + 1)
            if c0 >= c1 or r0 >= r1:
                continue
            cols = np.arange(c0, c1)
            vis = zbuf[cols] > depth
            if not vis.any():
                continue
            rgb, alpha = sprite(o.category, o.colour)
            res = rgb.shape[0]
            uu = np.clip(((cols + 0.5 - left) / sw * res).astype(np.intp), 0, res - 1)
            vv = np.clip(((np.arange(r0, r1) + 0.5 - top) / sh * res).astype(np.intp), 0, res - 1)
            tex = np.clip(_hazed(rgb[vv][:, uu].astype(np.float64), np.array(depth)), 0, 255).round().astype(np.uint8)
            mask = alpha[vv][:, uu] & vis[None, :]
            np.copyto(img[r0:r1, c0:c1], tex, where=mask[..., None])


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
