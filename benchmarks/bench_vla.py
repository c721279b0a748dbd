"""VLA benchmarks: our MuJoCo renderer vs Meta-World's own ``render()``, and action-chunk latency.

    python benchmarks/bench_vla.py [--size 128] [--frames 60] [--latency-iters 20] [--json out.json]

Renderer: the same Meta-World scene (reach-v3, camera corner2), the same image size, in the same run;
only the render calls are timed (the env is stepped by its scripted expert between frames so every
frame differs). Latency: one forward pass of AtlasVLA (batch 1) giving a whole chunk; control rate =
chunk / latency (every action of a chunk executed) and execute / latency (receding horizon).
Prints ratios; never a timed test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")


def bench_render(size: int, frames: int, camera: str = "corner2") -> dict[str, Any]:
    import warnings

    import numpy as np
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE
    from metaworld.policies import ENV_POLICY_MAP

    from atlasva.sim.render import OffscreenRenderer

    env = ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE["reach-v3-goal-observable"](seed=0, render_mode="rgb_array")
    env.camera_name = camera
    env.width = env.height = size
    env.mujoco_renderer.width = env.mujoco_renderer.height = size
    env.mujoco_renderer.camera_name = camera
    env.mujoco_renderer.camera_id = None
    policy = ENV_POLICY_MAP["reach-v3"]()
    ours = OffscreenRenderer(env.model, size, size, camera, flip_vertical=True)
    obs, _ = env.reset()

    def run(render: Any) -> tuple[float, Any]:
        nonlocal obs
        render()  # warm-up (context creation)
        total = 0.0
        img = None
        for _ in range(frames):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                obs, *_ = env.step(policy.get_action(obs))
            t = time.perf_counter()
            img = render()
            total += time.perf_counter() - t
        return frames / total, img

    ours_fps, ours_img = run(lambda: ours.render(env.data))
    mw_fps, mw_img = run(lambda: env.render())
    ours.close()
    env.close()
    assert ours_img.shape == mw_img.shape == (size, size, 3) and ours_img.dtype == np.uint8
    return {"size": size, "frames": frames, "camera": camera, "ours_fps": ours_fps, "metaworld_fps": mw_fps,
            "speedup": ours_fps / mw_fps}


def bench_latency(name: str, geometry_kwargs: dict[str, Any], iters: int, execute: int, device: str = "cpu",
                  dtype: str = "float32") -> dict[str, Any]:
    import torch

    from atlasva.vla.model import build_model, make_geometry

    size = geometry_kwargs.pop("size", "tiny")
    g = make_geometry(size, **geometry_kwargs)
    model = build_model(g).eval().to(device=device, dtype=getattr(torch, dtype))
    x = torch.rand(1, 3, g.image_size, g.image_size, device=device, dtype=getattr(torch, dtype))
    ids, mask = model.text.tokenize(["open the top drawer and put the bowl inside"], device=torch.device(device))
    state = torch.zeros(1, g.state_dim, device=device, dtype=x.dtype) if g.state_dim else None
    times = []
    with torch.inference_mode():
        for i in range(iters + 3):
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            model(x, ids, mask, state, generator=None)
            if device == "cuda":
                torch.cuda.synchronize()
            if i >= 3:
                times.append(time.perf_counter() - t)
    ms = 1000 * statistics.median(times)
    return {"model": name, "device": device, "dtype": dtype, "image_size": g.image_size, "chunk": g.chunk,
            "head": g.head, "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "chunk_latency_ms": ms,
            "control_rate_hz_full_chunk": 1000 * g.chunk / ms, f"control_rate_hz_execute_{execute}": 1000 * execute / ms}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--latency-iters", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    out: dict[str, Any] = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "threads": args.threads,
                           "loadavg_before": os.getloadavg()}
    try:
        r = bench_render(args.size, args.frames)
        out["render"] = r
        print(f"render {r['size']}px: ours {r['ours_fps']:.1f} fps, Meta-World render() {r['metaworld_fps']:.1f} fps "
              f"-> {r['speedup']:.1f}x")
    except ImportError as exc:
        print(f"render benchmark skipped: {exc}", file=sys.stderr)
    lat = [
        bench_latency("tiny (LIBERO layout 224px, chunk 8x7)", {"size": "tiny"}, args.latency_iters, 4),
        bench_latency("tiny (Meta-World config 96px, chunk 8x4, proprio)",
                      {"size": "tiny", "image_size": 96, "action_dim": 4, "state_dim": 4}, args.latency_iters, 4),
        bench_latency("tiny flow head (224px, 10 Euler steps)", {"size": "tiny", "head": "flow"}, args.latency_iters, 4),
    ]
    if torch.cuda.is_available():
        lat.append(bench_latency("vggt-1b geometry (224px, chunk 8x7)", {"size": "vggt-1b"}, args.latency_iters, 4,
                                 device="cuda", dtype="bfloat16"))
    out["latency"] = lat
    for r in lat:
        print(f"{r['model']} [{r['device']}, {r['params_m']:.1f}M params]: {r['chunk_latency_ms']:.1f} ms/chunk, "
              f"{r['control_rate_hz_full_chunk']:.0f} Hz (full chunk), {r['control_rate_hz_execute_4']:.0f} Hz (execute 4)")
    out["loadavg_after"] = os.getloadavg()
    print(f"load average before/after: {out['loadavg_before']} / {out['loadavg_after']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
