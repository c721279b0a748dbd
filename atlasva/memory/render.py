"""Atlas images (numpy + PIL only): the injected RGB map, the overlay, and the PNG panel."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from atlasva.formats import IMAGE_PLACEHOLDER

LEGEND = (
    f"Memory map {IMAGE_PLACEHOLDER}: red = danger (hazards, past failures), "
    "green = affinity (past successful paths), white box = you, blue box = goal."
)
OVERLAY_LEGEND = (
    "The observation is tinted with the memory map: red = danger (hazards, past failures), "
    "green = affinity (past successful paths)."
)
BOX_LEGEND = (
    f"Memory maps {IMAGE_PLACEHOLDER}: left = where you walk, right = where boxes go; "
    "red = danger (hazards, dead cells, past failures), green = affinity (past successful paths), white box = you (left) and the boxes (right), "
    "blue box = targets."
)
GRASP_LEGEND = (
    "The table in the camera image is tinted where past picks and places were aimed: red = they failed there, "
    "green = they were part of successful attempts."
)
AGENT_RGB = (255, 255, 255)
GOAL_RGB = (60, 120, 255)


def atlas_colors(danger: np.ndarray, affinity: np.ndarray) -> np.ndarray:
    """H×W×3 uint8: red = D, green = A, blue = 0."""
    if danger.shape != affinity.shape or danger.ndim != 2:
        raise ValueError(f"danger {danger.shape} and affinity {affinity.shape} must be equal H×W arrays")
    rgb = np.zeros((*danger.shape, 3), dtype=np.uint8)
    rgb[..., 0] = np.round(np.clip(danger, 0, 1) * 255)
    rgb[..., 1] = np.round(np.clip(affinity, 0, 1) * 255)
    return rgb


def _outline(img: np.ndarray, cell: Sequence[int], t: int, color: tuple[int, int, int]) -> None:
    r, c = int(cell[0]), int(cell[1])
    h, w = img.shape[0] // t, img.shape[1] // t
    if not (0 <= r < h and 0 <= c < w):
        return
    k = max(1, t // 8)
    y0, x0 = r * t, c * t
    img[y0 : y0 + k, x0 : x0 + t] = color
    img[y0 + t - k : y0 + t, x0 : x0 + t] = color
    img[y0 : y0 + t, x0 : x0 + k] = color
    img[y0 : y0 + t, x0 + t - k : x0 + t] = color


def upsample(rgb: np.ndarray, size: int) -> tuple[np.ndarray, int]:
    """Nearest-neighbour upsampling so the longer side is about ``size`` pixels; returns (image, tile)."""
    t = max(1, int(size) // max(rgb.shape[:2]))
    return np.ascontiguousarray(np.repeat(np.repeat(rgb, t, axis=0), t, axis=1)), t


def atlas_image(
    danger: np.ndarray,
    affinity: np.ndarray,
    agent: Sequence[int] | None,
    goals: Sequence[Sequence[int]],
    size: int = 224,
    base: tuple[np.ndarray, int] | None = None,
    marks: Sequence[Sequence[int]] = (),
) -> np.ndarray:
    """The atlas as the injected RGB image, agent, ``marks`` (e.g. boxes) and goals outlined.
    ``base`` = a cached upsample."""
    img, t = base if base is not None else upsample(atlas_colors(danger, affinity), size)
    img = img.copy()
    for g in goals:
        _outline(img, g, t, GOAL_RGB)
    for m in (*marks, *([agent] if agent is not None and len(agent) == 2 else [])):
        _outline(img, m, t, AGENT_RGB)
    return img


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 6) -> np.ndarray:
    """Two maps in one image, separated by a grey bar (they stay distinguishable by position)."""
    h = max(left.shape[0], right.shape[0])
    out = np.full((h, left.shape[1] + gap + right.shape[1], 3), 128, dtype=np.uint8)
    out[: left.shape[0], : left.shape[1]] = left
    out[: right.shape[0], left.shape[1] + gap :] = right
    return out


def grasp_tint(
    shape: tuple[int, ...], table_to_image: np.ndarray, danger: np.ndarray, affinity: np.ndarray, seen: np.ndarray,
    alpha: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(α·colour per pixel, mask) to tint a camera frame of ``shape`` where the table-plane grid cells
    with evidence (``seen``) appear. ``table_to_image`` maps grid (col, row, 1) to image coordinates
    normalised to [0, 1] (x / width, y / height, 1), so it serves any frame size."""
    h, w = int(shape[0]), int(shape[1])
    inv = np.linalg.inv(np.diag([w, h, 1.0]) @ np.asarray(table_to_image, dtype=np.float64))
    ys, xs = np.mgrid[0:h, 0:w]
    pix = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5, np.ones(h * w)])  # pixel centres
    g = inv @ pix
    with np.errstate(divide="ignore", invalid="ignore"):
        col, row = g[0] / g[2], g[1] / g[2]
    gh, gw = danger.shape
    inside = np.isfinite(col) & np.isfinite(row) & (g[2] != 0) & (col >= 0) & (col < gw) & (row >= 0) & (row < gh)
    r = np.where(inside, row, 0).astype(np.intp)
    c = np.where(inside, col, 0).astype(np.intp)
    mask = (inside & seen[r, c]).reshape(h, w)
    tint = alpha * atlas_colors(danger, affinity)[r, c].astype(np.float32).reshape(h, w, 3)
    return tint, mask


def overlay(frame: np.ndarray, danger: np.ndarray, affinity: np.ndarray, alpha: float = 0.35) -> np.ndarray:
    """Alpha-blend the atlas onto an observation frame (the grid assumed to span the whole frame)."""
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame must be H×W×3, got {frame.shape}")
    colors = Image.fromarray(atlas_colors(danger, affinity)).resize((frame.shape[1], frame.shape[0]), Image.NEAREST)
    out = (1 - alpha) * frame.astype(np.float32) + alpha * np.asarray(colors, dtype=np.float32)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- panel


def _font(size: int = 12) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - very old Pillow
        return ImageFont.load_default()


def ascii_text(s: str) -> str:
    return s.replace("→", "->").replace("×", "x").encode("ascii", "replace").decode("ascii")


def _wrap(text: str, width: int) -> list[str]:
    words, lines, cur = text.split(), [], ""
    for w in words:
        if len(cur) + len(w) + 1 > width and cur:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    if cur:
        lines.append(cur)
    return lines


def _labelled(img: np.ndarray, label: str, cell: int, font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> Image.Image:
    """``img`` scaled into a cell×cell tile with a wrapped caption underneath."""
    pil = Image.fromarray(img)
    scale = cell / max(pil.size)
    pil = pil.resize((max(1, round(pil.size[0] * scale)), max(1, round(pil.size[1] * scale))), Image.NEAREST)
    lines = _wrap(ascii_text(label), max(8, cell // 7))[:4]
    tile = Image.new("RGB", (cell, cell + 14 * len(lines) + 6), (255, 255, 255))
    tile.paste(pil, ((cell - pil.size[0]) // 2, 0))
    d = ImageDraw.Draw(tile)
    for i, line in enumerate(lines):
        d.text((2, cell + 3 + 14 * i), line, fill=(0, 0, 0), font=font)
    return tile


def panel(
    path: str | Path,
    rows: list[dict],
    title: str,
    cell: int = 160,
) -> Path:
    """Write a PNG: one row per entry of ``rows`` = {"name", "tiles": [(img, label)], "lines": [str]}."""
    font, big = _font(12), _font(16)
    row_imgs: list[Image.Image] = []
    for row in rows:
        tiles = [_labelled(img, label, cell, font) for img, label in row["tiles"]]
        th = max((t.size[1] for t in tiles), default=0)
        lines = [ascii_text(x) for x in row.get("lines", [])]
        text_h = 22 + 15 * len(lines)
        width = max(sum(t.size[0] + 8 for t in tiles) + 8, 400)
        im = Image.new("RGB", (width, th + text_h + 8), (255, 255, 255))
        d = ImageDraw.Draw(im)
        d.text((8, 4), ascii_text(row["name"]), fill=(0, 0, 0), font=big)
        x = 8
        for t in tiles:
            im.paste(t, (x, 24))
            x += t.size[0] + 8
        for i, line in enumerate(lines):
            d.text((8, 28 + th + 15 * i), line, fill=(30, 30, 30), font=font)
        row_imgs.append(im)
    width = max([r.size[0] for r in row_imgs] + [400])
    height = 30 + sum(r.size[1] + 6 for r in row_imgs)
    out = Image.new("RGB", (width, height), (255, 255, 255))
    ImageDraw.Draw(out).text((8, 6), ascii_text(title), fill=(0, 0, 0), font=big)
    y = 30
    for r in row_imgs:
        out.paste(r, (0, y))
        y += r.size[1] + 6
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out.save(path)
    return path
