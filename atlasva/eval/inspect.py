"""The mask and advantage inspector: see exactly which tokens are trained and what credit they get.

The trainer dumps a few episodes per inspected step to ``RUN/inspect/step-NNNNNN.json`` (token ids,
decoded pieces, loss mask, turn ends, per-token advantages, values and rewards, per-turn reward
components, and the images each turn showed, as PNGs). ``atlasva inspect RUN [--step N] [--episode K]``
renders one episode in the terminal (ANSI colours) and as a standalone HTML file.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

LEGEND = "trained tokens (loss mask 1) coloured by advantage (blue +, red −); grey = observation (mask 0); ⏎ = turn end"


def dump_step(run_dir: Path, step: int, batch: Any, advantages: Any, values: Any, result: Any, processor: Any,
              max_episodes: int = 4) -> Path:
    """Write the first ``max_episodes`` samples of a step for the inspector."""
    out_dir = Path(run_dir) / "inspect"
    img_dir = out_dir / f"step-{step:06d}-images"
    img_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for row in range(min(max_episodes, len(batch.encoded))):
        enc = batch.encoded[row]
        ep = result.episodes[batch.episode_index[row]]
        n = len(enc)
        ids = enc.input_ids
        mask = batch.loss_mask[row, :n].tolist()
        pieces = [processor.decode([t]) for t in ids]
        tokens = []
        for pos in range(n):
            tokens.append({
                "id": int(ids[pos]),
                "text": pieces[pos],
                "mask": int(mask[pos]),
                "turn_end": bool(batch.turn_end_mask[row, pos]),
                "reward": float(batch.token_rewards[row, pos]),
                "adv": float(advantages[row, pos]),
                "value": float(values[row, pos]) if values is not None else None,
            })
        turns = []
        for k, t in enumerate(ep.turns):
            paths = []
            for j, frame in enumerate(t.frames):
                p = img_dir / f"ep{row}-turn{k}-{j}.png"
                Image.fromarray(np.asarray(frame, dtype=np.uint8)).save(p)
                paths.append(str(p.relative_to(out_dir)))
            turns.append({"rewards": t.rewards, "metrics": t.metrics, "actions": t.actions,
                          "response": t.response_text, "images": paths})
        records.append({"row": row, "env": ep.env_name, "seed": ep.seed, "outcome": ep.outcome,
                        "finish_reason": ep.failure_kind or ep.outcome, "tokens": tokens, "turns": turns})
    path = out_dir / f"step-{step:06d}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"step": step, "episodes": records}))
    tmp.replace(path)
    return path


def available_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in (Path(run_dir) / "inspect").glob("step-*.json"))


def load_episode(run_dir: Path, step: int | None = None, episode: int = 0) -> tuple[int, dict[str, Any]]:
    steps = available_steps(run_dir)
    if not steps:
        raise FileNotFoundError(f"{run_dir} has no inspector dumps (inspect/step-*.json); train with trainer.inspect_every > 0")
    if step is None:
        step = steps[-1]
    if step not in steps:
        raise ValueError(f"no dump for step {step} in {run_dir}; available: {steps}")
    data = json.loads((Path(run_dir) / "inspect" / f"step-{step:06d}.json").read_text())
    eps = data["episodes"]
    if not 0 <= episode < len(eps):
        raise ValueError(f"episode {episode} out of range: step {step} holds {len(eps)} episodes (0..{len(eps) - 1})")
    return step, eps[episode]


def _shade(adv: float, scale: float) -> tuple[int, int, int]:
    a = max(-1.0, min(1.0, adv / scale)) if scale > 0 else 0.0
    if a >= 0:
        return (int(255 - 135 * a), int(255 - 95 * a), 255)
    return (255, int(255 + 135 * a), int(255 + 135 * a))


def render_terminal(ep: dict[str, Any], color: bool = True) -> str:
    out = [f"{ep['env']} seed {ep['seed']} — {ep['outcome']} ({ep['finish_reason']})", LEGEND, ""]
    scale = max((abs(t["adv"]) for t in ep["tokens"] if t["mask"]), default=1.0) or 1.0
    line = []
    turn = 0
    for t in ep["tokens"]:
        text = t["text"].replace("\n", "\\n\n")
        if t["text"] == "<|image_pad|>":
            text = "▦"
        if color:
            if t["mask"]:
                r, g, b = _shade(t["adv"], scale)
                text = f"\x1b[48;2;{r};{g};{b}m\x1b[30m{text}\x1b[0m"
            else:
                text = f"\x1b[90m{text}\x1b[0m"
        line.append(text)
        if t["turn_end"]:
            rw = ep["turns"][turn]["rewards"] if turn < len(ep["turns"]) else {}
            line.append(f" ⏎[turn {turn}: " + ", ".join(f"{k}={v:+.3f}" for k, v in rw.items()) + "]\n")
            turn += 1
    out.append("".join(line))
    out.append("")
    for k, t in enumerate(ep["turns"]):
        out.append(f"turn {k}: actions {t['actions']} metrics {t['metrics']} images {len(t['images'])}")
    return "\n".join(out)


def render_html(ep: dict[str, Any], inspect_dir: Path) -> str:
    scale = max((abs(t["adv"]) for t in ep["tokens"] if t["mask"]), default=1.0) or 1.0
    spans = []
    turn = 0
    for t in ep["tokens"]:
        text = "▦" if t["text"] == "<|image_pad|>" else t["text"]
        tip = f"id {t['id']} | mask {t['mask']} | adv {t['adv']:+.4f}"
        if t["value"] is not None:
            tip += f" | value {t['value']:+.4f}"
        if t["reward"]:
            tip += f" | reward {t['reward']:+.4f}"
        if t["mask"]:
            r, g, b = _shade(t["adv"], scale)
            style = f"background:rgb({r},{g},{b})"
        else:
            style = "color:#999"
        spans.append(f'<span class="t" style="{style}" title="{html.escape(tip)}">{html.escape(text)}</span>')
        if t["turn_end"]:
            rw = ep["turns"][turn]["rewards"] if turn < len(ep["turns"]) else {}
            spans.append('<span class="end">⏎ turn ' + str(turn) + ": "
                         + html.escape(", ".join(f"{k}={v:+.3f}" for k, v in rw.items())) + "</span><br>")
            turn += 1
    turns_html = []
    for k, t in enumerate(ep["turns"]):
        imgs = "".join(
            f'<img src="data:image/png;base64,{base64.b64encode((inspect_dir / p).read_bytes()).decode()}">'
            for p in t["images"] if (inspect_dir / p).exists()
        )
        rows = "".join(f"<td>{html.escape(k2)}</td><td>{v:+.4f}</td>" for k2, v in t["rewards"].items())
        turns_html.append(f"<div class='turn'><b>turn {k}</b> actions {html.escape(str(t['actions']))} "
                          f"{html.escape(str(t['metrics']))}<br>{imgs}<table><tr>{rows}</tr></table></div>")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>atlasva inspect — {html.escape(ep['env'])}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} .tokens{{font-family:monospace;white-space:pre-wrap;line-height:1.7}}
.t{{border-radius:2px}} .end{{background:#222;color:#fff;padding:0 4px;margin:0 4px;border-radius:3px}}
img{{image-rendering:pixelated;width:168px;margin:4px;border:1px solid #ccc}} td{{padding:0 8px}}
.turn{{margin:1em 0}}</style></head><body>
<h2>{html.escape(ep['env'])} seed {ep['seed']} — {html.escape(ep['outcome'])} ({html.escape(ep['finish_reason'])})</h2>
<p>{html.escape(LEGEND)}. Hover a token for its id, mask, advantage, value and reward.</p>
<div class="tokens">{''.join(spans)}</div><h3>Turns</h3>{''.join(turns_html)}</body></html>"""


def inspect_main(argv: list[str]) -> int:
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="atlasva inspect", description="Token-level view of a training episode.")
    p.add_argument("run", help="run folder (runs/NAME-HASH)")
    p.add_argument("--step", type=int, default=None, help="RL step (default: the latest dumped)")
    p.add_argument("--episode", type=int, default=0, help="episode index within the step")
    p.add_argument("--html", default=None, help="HTML output path (default: RUN/inspect/step-N-episode-K.html)")
    p.add_argument("--no-color", action="store_true")
    args = p.parse_args(argv)
    run = Path(args.run)
    if not run.is_dir():
        raise FileNotFoundError(f"no run folder at {run}")
    step, ep = load_episode(run, args.step, args.episode)
    print(render_terminal(ep, color=not args.no_color and sys.stdout.isatty()))
    out = Path(args.html) if args.html else run / "inspect" / f"step-{step:06d}-episode-{args.episode}.html"
    out.write_text(render_html(ep, run / "inspect"))
    print(f"\nHTML: {out}")
    return 0
