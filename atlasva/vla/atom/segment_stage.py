"""``atlasva vla segment CONFIG``: cut every demo of the dataset into atomic subtasks, store the labels in
the dataset (:mod:`.subtask_data`) and draw one contact sheet per task of its boundary frames
(``<dataset>/meta/subtasks/contact-<task>.png`` for LeRobot, ``<folder>/subtasks/`` for HDF5)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from atlasva.vla.atom import segment as seg_lib
from atlasva.vla.atom.config import SegmentSection
from atlasva.vla.atom.subtask_data import (
    EpisodeInput,
    hdf5_files,
    is_lerobot,
    iter_episode_inputs,
    read_meta,
    write_hdf5,
    write_lerobot,
)
from atlasva.vla.config import VLAConfig

METHODS = ("auto", "template", "events")


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def settings_of(section: SegmentSection) -> seg_lib.SegmentSettings:
    names = {f.name for f in dataclasses.fields(seg_lib.SegmentSettings)}
    return seg_lib.SegmentSettings(**{k: v for k, v in dataclasses.asdict(section).items() if k in names})


def settings_hash(section: SegmentSection) -> str:
    """What decides the labels (the contact sheets and the LLM's transport settings do not)."""
    d = dataclasses.asdict(section)
    d.pop("sheet_episodes")
    llm = d.pop("llm")
    if d["llm_names"]:
        d["llm"] = {"model": llm["model"], "base_url": llm["base_url"]}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def templates_by_instruction(cfg: VLAConfig) -> dict[str, list[tuple[str, str]]]:
    """Templates keyed by instruction: built-ins and ``atom.segment.templates`` by task name (through
    ``sim.instructions``) or directly by instruction text."""
    raw: dict[str, list[tuple[str, str]]] = dict(seg_lib.TEMPLATES)
    for key, spec in cfg.atom.segment.templates.items():
        try:
            raw[key] = [(str(text), str(end)) for text, end in spec]
        except (TypeError, ValueError):
            raise ValueError(f"atom.segment.templates.{key} must be a list of [text, end event] pairs, got {spec!r}") from None
    out = {}
    for key, tpl in raw.items():
        instruction = cfg.sim.instructions.get(key, key)
        out[str(instruction)] = tpl
    return out


def segment_dataset(cfg: VLAConfig, path: str | Path | None = None, backend: Any = None) -> dict[str, Any]:
    """Segment every episode of ``path`` (default: the training data) and store the result; a dataset
    already segmented with the same settings is left as is. ``backend`` overrides the LLM client (tests)."""
    sec = cfg.atom.segment
    if sec.method not in METHODS:
        raise ValueError(f"atom.segment.method must be one of {METHODS}, got {sec.method!r}")
    root = Path(path or getattr(getattr(cfg, "data", None), "path", "") or cfg.collect.dataset)
    digest = settings_hash(sec)
    old = read_meta(root) if root.exists() else None
    if old is not None and old.get("settings_hash") == digest:
        _progress(f"{root} is already segmented with these settings ({len(old['episodes'])} episodes)")
        return old
    settings = settings_of(sec)
    templates = templates_by_instruction(cfg)
    t0 = time.time()
    inputs: list[EpisodeInput] = list(iter_episode_inputs(root))
    if not inputs:
        raise ValueError(f"{root} holds no episodes")
    cuts: list[tuple[EpisodeInput, seg_lib.Segmentation]] = []
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a core dependency; stay usable without it
        def tqdm(x: Any, **_: Any) -> Any:
            return x
    for ep in tqdm(inputs, desc="segment", unit="episode", disable=None):
        template = templates.get(ep.task) if sec.method != "events" else None
        if sec.method == "template" and template is None:
            raise ValueError(f"atom.segment.method=template but task {ep.task!r} has no template; known: "
                             f"{sorted(templates)} (add atom.segment.templates.<task>)")
        cuts.append((ep, seg_lib.segment_episode(ep.hand, ep.gripper, ep.obj, template, settings)))
    if sec.llm_names:
        _name_with_llm(cfg, cuts, backend)
    record = {
        "version": 1, "settings_hash": digest, "method": sec.method, "settings": dataclasses.asdict(settings),
        "episodes": [{"key": ep.key, "task": ep.task, **s.to_dict()} for ep, s in cuts],
        "tasks": _task_summary(cuts),
    }
    if is_lerobot(root):
        write_lerobot(root, cuts, record)
        sheet_dir = root / "meta" / "subtasks"
    else:
        write_hdf5(root, cuts, record)
        sheet_dir = (root if root.is_dir() else root.parent) / "subtasks"
    sheets = contact_sheets(root, cuts, sheet_dir, sec.sheet_episodes)
    for task, info in record["tasks"].items():
        _progress(f"segment {task!r}: {info['episodes']} episodes, subtasks {info['texts']}, "
                  f"{info['segments_mean']:.1f} segments on average, template matched {info['template_matched']}")
    _progress(f"segmented {len(cuts)} episodes of {root} in {time.time() - t0:.1f}s; contact sheets: "
              f"{', '.join(str(p) for p in sheets)}")
    return record


def _task_summary(cuts: list[tuple[EpisodeInput, seg_lib.Segmentation]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for task in dict.fromkeys(ep.task for ep, _ in cuts):
        mine = [s for ep, s in cuts if ep.task == task]
        common = Counter(tuple(s.texts) for s in mine).most_common(1)[0][0]
        out[task] = {"episodes": len(mine), "texts": list(common),
                     "segments_mean": float(np.mean([len(s.texts) for s in mine])),
                     "template_matched": sum(1 for s in mine if s.template) if mine[0].template is not None else None}
    return out


def _name_with_llm(cfg: VLAConfig, cuts: list[tuple[EpisodeInput, seg_lib.Segmentation]], backend: Any) -> None:
    """Rename generic segments: one request per (task, sequence of end events); the answer names every
    episode cut the same way. Template cuts keep their template's names."""
    requests: dict[tuple[str, tuple[str, ...]], tuple[str, list[str]]] = {}
    for ep, s in cuts:
        if s.template is None:
            requests.setdefault((ep.task, tuple(s.ends)), (ep.task, seg_lib.describe_segments(s, ep.hand, ep.gripper)))
    if not requests:
        return
    if backend is None:
        from atlasva.policy.backends import OpenAIBackend
        from atlasva.policy.config import SamplingConfig

        backend = OpenAIBackend(cfg.atom.segment.llm, SamplingConfig(temperature=0.0, max_new_tokens=256))
    try:
        names = seg_lib.llm_names(backend, requests)
    except Exception as exc:  # a server that fails is reported; the rule names stay
        _progress(f"segment: LLM naming failed ({type(exc).__name__}: {exc}); keeping the rule-based names")
        return
    bad = [k for k, v in names.items() if v is None]
    if bad:
        _progress(f"segment: the LLM gave no usable names for {len(bad)} of {len(names)} cuts; those keep rule names")
    for ep, s in cuts:
        given = names.get((ep.task, tuple(s.ends))) if s.template is None else None
        if given:
            s.texts = list(given)


def contact_sheets(root: Path, cuts: list[tuple[EpisodeInput, seg_lib.Segmentation]], folder: Path,
                   episodes_per_task: int) -> list[Path]:
    """Per task, up to ``episodes_per_task`` rows: the first frame, then each subtask's boundary frame
    (all camera views side by side), captioned with the subtask and the frame number."""
    from PIL import Image, ImageDraw, ImageFont

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    font = ImageFont.load_default()
    for task in dict.fromkeys(ep.task for ep, _ in cuts):
        rows = [(ep, s) for ep, s in cuts if ep.task == task][:max(1, episodes_per_task)]
        frames_per_row = [_episode_frames(root, ep.key) for ep, _ in rows]
        cells: list[list[tuple[np.ndarray, str]]] = []
        for (_, s), frames in zip(rows, frames_per_row):
            picks = [(frames[0], "start (0)")]
            picks += [(frames[b], f"{k + 1}: {s.texts[k]} ({b})") for k, b in enumerate(s.boundary_frames())]
            cells.append(picks)
        h, w = cells[0][0][0].shape[:2]
        scale = max(1, 160 // max(h, 1))
        cw, ch, cap = w * scale, h * scale, 28
        cols = max(len(r) for r in cells)
        sheet = Image.new("RGB", (cols * cw, len(cells) * (ch + cap) + 20), "white")
        draw = ImageDraw.Draw(sheet)
        draw.text((4, 4), task, fill="black", font=font)
        for r, picks in enumerate(cells):
            y = 20 + r * (ch + cap)
            for c, (img, caption) in enumerate(picks):
                sheet.paste(Image.fromarray(img).resize((cw, ch), Image.NEAREST), (c * cw, y))
                for line, text in enumerate(_wrap(caption, max(8, cw // 6))[:2]):
                    draw.text((c * cw + 2, y + ch + 2 + 12 * line), text, fill="black", font=font)
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in task)[:60] or "task"
        path = folder / f"contact-{safe}.png"
        sheet.save(path)
        paths.append(path)
    return paths


def _wrap(text: str, width: int) -> list[str]:
    lines, cur = [], ""
    for word in text.split():
        if cur and len(cur) + 1 + len(word) > width:
            lines.append(cur)
            cur = word
        else:
            cur = f"{cur} {word}".strip()
    return [*lines, cur] if cur else lines


def _episode_frames(root: Path, key: str) -> np.ndarray:
    """Every frame of one episode, all image columns side by side: uint8 [T, H, W·S, 3]."""
    if is_lerobot(root):
        from atlasva.vla.data import LeRobotDataset

        ds = LeRobotDataset(root)
        keys = sorted(k for k, f in ds.features.items() if f["dtype"] in ("image", "video"))
        if not keys:
            raise ValueError(f"{root} has no image columns to draw a contact sheet from")
        d = ds.read_episode(int(key), keys)
        return np.concatenate([d[k] for k in keys], axis=2)
    from atlasva.vla.data import read_libero_hdf5

    name, demo = key.split(":")
    file = next(f for f in hdf5_files(root) if f.name == name)
    ep = next(e for e in read_libero_hdf5(file) if e["name"] == demo)
    views = [ep[k] for k in ("image", "wrist_image") if k in ep]
    return np.concatenate(views, axis=2)
