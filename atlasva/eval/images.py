"""Contact sheets: many frames in one labelled PNG (levels, episodes)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def contact_sheet(
    frames: Sequence[np.ndarray], labels: Sequence[str] | None = None, *, columns: int = 8, pad: int = 4, title: str = ""
) -> Image.Image:
    """Tile equally sized or differently sized uint8 H×W×3 frames into one image with captions."""
    if not frames:
        raise ValueError("contact_sheet needs at least one frame")
    labels = list(labels) if labels is not None else [""] * len(frames)
    if len(labels) != len(frames):
        raise ValueError(f"{len(labels)} labels for {len(frames)} frames")
    font = ImageFont.load_default()
    cell_h = max(f.shape[0] for f in frames)
    cell_w = max(f.shape[1] for f in frames)
    label_h = 14 if any(labels) else 0
    title_h = 18 if title else 0
    columns = max(1, min(columns, len(frames)))
    rows = (len(frames) + columns - 1) // columns
    sheet = Image.new(
        "RGB", (columns * (cell_w + pad) + pad, title_h + rows * (cell_h + label_h + pad) + pad), (255, 255, 255)
    )
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, 3), title, fill=(0, 0, 0), font=font)
    for i, (frame, label) in enumerate(zip(frames, labels)):
        r, c = divmod(i, columns)
        x = pad + c * (cell_w + pad)
        y = title_h + pad + r * (cell_h + label_h + pad)
        sheet.paste(Image.fromarray(np.asarray(frame, dtype=np.uint8)), (x, y))
        if label:
            draw.text((x, y + cell_h + 1), label[: max(4, cell_w // 6)], fill=(0, 0, 0), font=font)
    return sheet


def save_png(image: Image.Image, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
