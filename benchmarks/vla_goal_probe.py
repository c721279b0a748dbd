"""Can a model locate reach-v3's goal from the policy's own frames? Goal-position regression probes.

Frames come from ``MetaWorldTask`` exactly as ``atlasva vla collect|eval`` renders them (the config's cameras
and size; default ``metaworld-tiny``: top view + wrist camera at 96 px). Each seed gives ``--poses`` frames
along a noisy scripted-expert episode (the hand somewhere between its start and the goal); the label is the
goal's position (``env._target_pos``). Training seeds 0…N−1, held-out seeds from 100000 (the evaluation
seeds), so no goal is shared. Every method reports **training and held-out** error (mean Euclidean, metres)
and the share of held-out frames within 5 cm (reach-v3's success radius):

* ``mean`` — predict the training goals' mean (the plateau every learner first sits on);
* ``hand`` — a ridge read-out from the hand position alone: no vision, yet 0.056 m, because later frames have the
  hand near the goal; ``start_error_m`` (each seed's first frame, the hand at its start) is where it is blind;
* ``oracle-linear`` / ``oracle-quadratic`` — the reference line: a colour threshold (the goal is a bright red
  sphere: R > 200, G < 60, B < 60, minus the pixels that are red in most training frames, i.e. the arm's
  and fingers' fixed highlights), its centroid per view, least squares from the centroids, found flags and
  the hand position (the wrist camera moves with it) — and their squares and products — to the goal;
* ``keypoints`` — the keypoint stem AtlasVLA uses (``KeypointEncoder``: 3 convolutions at 48×48, 16 spatial
  soft-argmax keypoints per view) with a linear read-out, MSE on standardised targets;
* ``vla-<vision>-<head>`` — the whole tiny AtlasVLA (instruction, proprioception, aggregator, decoder) with a
  1-step, 3-D "action" = the standardised goal: ``patch`` only or ``+kp`` (keypoint path on), trained with
  the L1 or MSE head. This is the test of whether the goal reaches the decoder.

Learners use AdamW, batch 32, ±4-px random shifts (as ``atlasva vla train``), one torch thread, and are
evaluated every ``--eval-every`` steps. Writes JSON (and a PNG of the curves) ::

    .venv/bin/python benchmarks/vla_goal_probe.py --methods mean,oracle,keypoints --steps 2500
    .venv/bin/python benchmarks/vla_goal_probe.py --methods vla-patch-l1,vla-kp-mse --steps 2500 --out …json

``--policy RUN_OR_CHECKPOINT …`` instead asks policies trained by ``atlasva vla train`` how well their action
decoder knows the goal (``policy_goal_error``: a ridge read-out from the decoder's outputs and the hand position,
one from the keypoint coordinates alone, and the auxiliary head's own estimate when there is one); compare with
``hand`` and look at ``start_error_m``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

HELD_OUT_START = 100000
RED_GOAL = (200, 60, 60)  # R above, G and B below


def render_frames(config: str, seeds: list[int], poses: int, cache: Path | None) -> dict[str, np.ndarray]:
    """{"images": uint8 [N, S, H, W, 3], "state": [N, 4], "goal": [N, 3], "seed": [N]} for reach-v3."""
    if cache is not None and cache.exists():
        data = dict(np.load(cache))
        if sorted(set(data["seed"].tolist())) == sorted(seeds) and len(data["seed"]) == len(seeds) * poses:
            return data
    from atlasva.config import load_config
    from atlasva.vla.config import VLAConfig
    from atlasva.vla.sim import MetaWorldTask

    cfg, _ = load_config(VLAConfig, config, [], subdir="vla")
    sim = MetaWorldTask("reach-v3", cfg.sim.image_size, cfg.sim.cameras, cfg.sim.flip_vertical, cfg.sim.max_steps)
    every = 8  # expert steps between recorded poses: the hand moves ~1 cm per step
    out: dict[str, list[Any]] = {"images": [], "state": [], "goal": [], "seed": []}
    try:
        for seed in seeds:
            rng = np.random.default_rng([seed, 11])
            sim.reset(seed)
            for p in range(poses):
                out["images"].append(sim.images())
                out["state"].append(sim.state())
                out["goal"].append(np.asarray(sim.env._target_pos, dtype=np.float32).copy())
                out["seed"].append(seed)
                if p < poses - 1:
                    for _ in range(every):
                        sim.step(sim.expert_action() + 0.3 * rng.standard_normal(4).astype(np.float32))
    finally:
        sim.close()
    data = {k: np.stack(v) if k != "seed" else np.asarray(v) for k, v in out.items()}
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, **data)
    return data


def errors(pred: np.ndarray, goal: np.ndarray, seed: np.ndarray | None = None) -> dict[str, float]:
    """Mean / median Euclidean error and share within 5 cm; with the frames' seeds also ``start_error_m``, the
    error on each seed's first frame: the hand at its start pose says nothing about the goal there, so only a
    model that finds the goal in the pixels gets it below the mean goal's error."""
    d = np.linalg.norm(pred - goal, axis=1)
    out = {"error_m": float(d.mean()), "median_m": float(np.median(d)), "within_5cm": float((d < 0.05).mean())}
    if seed is not None:
        first = np.r_[True, seed[1:] != seed[:-1]]
        out["start_error_m"] = float(d[first].mean())
    return out


# ---------------------------------------------------------------------------------------------- oracle
def red_centroids(images: np.ndarray, static: np.ndarray) -> np.ndarray:
    """Per view: (x, y) centroid of the goal-red pixels in [-1, 1] and a found flag -> [N, S*3]."""
    img = images.astype(np.int16)
    r, g, b = RED_GOAL
    mask = (img[..., 0] > r) & (img[..., 1] < g) & (img[..., 2] < b) & ~static[None]  # [N, S, H, W]
    n, s, h, w = mask.shape
    ys, xs = np.linspace(-1, 1, h), np.linspace(-1, 1, w)
    count = mask.sum((2, 3))
    cx = (mask * xs[None, None, None, :]).sum((2, 3)) / np.maximum(count, 1)
    cy = (mask * ys[None, None, :, None]).sum((2, 3)) / np.maximum(count, 1)
    found = (count > 0).astype(np.float64)
    return np.stack([cx, cy, found], axis=-1).reshape(n, s * 3)


def quadratic(f: np.ndarray) -> np.ndarray:
    i, j = np.triu_indices(f.shape[1])
    return np.concatenate([f, f[:, i] * f[:, j]], axis=1)


def oracle(train: dict[str, np.ndarray], held: dict[str, np.ndarray]) -> dict[str, Any]:
    img = train["images"].astype(np.int16)
    r, g, b = RED_GOAL
    red = (img[..., 0] > r) & (img[..., 1] < g) & (img[..., 2] < b)
    static = red.mean(0) > 0.5  # [S, H, W]: the arm's / fingers' own red highlights
    ftr = np.concatenate([red_centroids(train["images"], static), train["state"][:, :3]], axis=1)
    fho = np.concatenate([red_centroids(held["images"], static), held["state"][:, :3]], axis=1)
    views = train["images"].shape[1]
    out = {}
    for name, feat in (("oracle-linear", lambda f: f), ("oracle-quadratic", quadratic)):
        a_tr = np.concatenate([feat(ftr), np.ones((len(ftr), 1))], axis=1)
        a_ho = np.concatenate([feat(fho), np.ones((len(fho), 1))], axis=1)
        coef, *_ = np.linalg.lstsq(a_tr, train["goal"], rcond=None)
        out[name] = {"train": errors(a_tr @ coef, train["goal"], train["seed"]),
                     "held_out": errors(a_ho @ coef, held["goal"], held["seed"]),
                     "goal_found_per_view": ftr[:, 2:3 * views:3].mean(0).tolist()}
    return out


# ---------------------------------------------------------------------------------------------- learners
def _standardise(goal: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return ((goal - mean) / std).astype(np.float32)


def train_learner(method: str, train: dict[str, np.ndarray], held: dict[str, np.ndarray], steps: int, eval_every: int,
                  lr: float, seed: int, config: str) -> dict[str, Any]:
    import torch
    from torch import nn

    from atlasva.vla.encoders import KeypointEncoder
    from atlasva.vla.model import IMAGENET_MEAN, IMAGENET_STD, build_model
    from atlasva.vla.sim import _augment

    torch.manual_seed(seed)
    mean, std = train["goal"].mean(0), train["goal"].std(0)
    y_tr = torch.from_numpy(_standardise(train["goal"], mean, std))
    s_mean, s_std = train["state"].mean(0), train["state"].std(0) + 1e-6
    views, size = train["images"].shape[1], train["images"].shape[2]
    instruction = "reach the red goal"
    if method == "keypoints":
        pixel_mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        pixel_std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

        class Probe(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.kp = KeypointEncoder(size, 48, 16, 16)
                self.out = nn.Linear(views * 16 * 2, 3)

            def forward(self, x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
                b = x.shape[0]
                x = (x.flatten(0, 1) - pixel_mean) / pixel_std
                return self.out(self.kp(x).reshape(b, -1))

        model: nn.Module = Probe()

        def predict(x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
            return model(x, state)

        def loss_fn(x: torch.Tensor, state: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return (model(x, state) - y).pow(2).mean()
    elif method.startswith("vla-"):
        from atlasva.config import load_config
        from atlasva.vla.config import VLAConfig

        _, vision, head = method.split("-")
        cfg, _ = load_config(VLAConfig, config, [], subdir="vla")
        geometry = cfg.model.geometry()
        import dataclasses

        geometry = dataclasses.replace(geometry, chunk=1, action_dim=3, head=head, aux_dim=0, views=views,
                                       keypoints=16 if vision == "kp" else 0)
        vla = build_model(geometry, seed=seed)
        model = vla
        ids, mask = vla.text.tokenize([instruction])

        def predict(x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
            b = x.shape[0]
            return vla(x, ids.expand(b, -1), mask.expand(b, -1), state)[:, 0]

        def loss_fn(x: torch.Tensor, state: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            b = x.shape[0]
            return vla.loss(x, ids.expand(b, -1), mask.expand(b, -1), y[:, None], state)
    else:
        raise ValueError(f"unknown method {method!r}")

    def frames(images: np.ndarray, idx: np.ndarray, gen: torch.Generator | None) -> torch.Tensor:
        x = torch.from_numpy(images[idx]).float().div_(255.0)  # [B, S, H, W, 3]
        b, s = x.shape[:2]
        x = x.flatten(0, 1).permute(0, 3, 1, 2)
        if gen is not None:
            x = _augment(x, 4, gen)
        return x.reshape(b, s, *x.shape[1:])

    def states(d: dict[str, np.ndarray], idx: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((d["state"][idx] - s_mean) / s_std).astype(np.float32))

    @torch.no_grad()
    def evaluate(d: dict[str, np.ndarray], limit: int) -> dict[str, float]:
        model.eval()
        idx = np.arange(min(limit, len(d["goal"])))
        preds = [predict(frames(d["images"], idx[i:i + 64], None), states(d, idx[i:i + 64])).numpy()
                 for i in range(0, len(idx), 64)]
        model.train()
        return errors(np.concatenate(preds) * std + mean, d["goal"][idx], d["seed"][idx])

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    curve = []
    t0 = time.time()
    model.train()
    for step in range(1, steps + 1):
        idx = rng.integers(0, len(y_tr), size=32)
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        loss = loss_fn(frames(train["images"], idx, gen), states(train, idx), y_tr[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % eval_every == 0 or step == steps:
            row = {"step": step, "train": evaluate(train, 400), "held_out": evaluate(held, 10**9),
                   "seconds": time.time() - t0}
            curve.append(row)
            print(f"{method} step {step}: train {row['train']['error_m']:.4f} m, held-out "
                  f"{row['held_out']['error_m']:.4f} m ({row['held_out']['within_5cm']:.2f} within 5 cm), "
                  f"{row['seconds']:.0f}s", flush=True)
    return {"train": curve[-1]["train"], "held_out": curve[-1]["held_out"], "curve": curve, "lr": lr,
            "steps": steps, "seconds": time.time() - t0}


# ---------------------------------------------------------------------------------------------- trained policies
def ridge_fit_predict(x_tr: np.ndarray, y_tr: np.ndarray, groups: np.ndarray, x_ho: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Ridge regression on standardised features, α by 5-fold cross-validation grouped by seed (the poses of one
    goal never straddle a fold). Returns the training and held-out predictions and α."""
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-8
    a, b = (x_tr - mu) / sd, (x_ho - mu) / sd
    y_mu = y_tr.mean(0)

    def fit(x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
        return np.linalg.solve(x.T @ x + alpha * np.eye(x.shape[1]), x.T @ (y - y_mu))

    folds = np.unique(groups) % 5
    fold_of = dict(zip(np.unique(groups), folds))
    fold = np.asarray([fold_of[g] for g in groups])
    best, best_err = 1.0, np.inf
    for alpha in (1e-1, 1.0, 10.0, 100.0, 1e3, 1e4):
        err = 0.0
        for k in range(5):
            w = fit(a[fold != k], y_tr[fold != k], alpha)
            err += np.linalg.norm(a[fold == k] @ w + y_mu - y_tr[fold == k], axis=1).sum()
        if err < best_err:
            best, best_err = alpha, err
    w = fit(a, y_tr, best)
    return a @ w + y_mu, b @ w + y_mu, best


def policy_goal_error(run: Path, train: dict[str, np.ndarray], held: dict[str, np.ndarray],
                      instruction: str = "reach the red goal") -> dict[str, Any]:
    """How well a trained policy's action decoder knows reach-v3's goal: a ridge read-out of the goal from
    the decoder's outputs (all action queries) and the state, fitted on the training seeds' frames and
    scored on the held-out seeds'; and, for a policy with an auxiliary head, that head's own goal error."""
    import torch

    from atlasva.runs import RunFolder
    from atlasva.vla.sim import ENV_STATE_KEY, STATE_KEY, VLAPolicy, aux_frame_offset

    loaded = (RunFolder(run.parent.parent).load_checkpoint(run) if run.parent.name == "checkpoints"
              else RunFolder(run).load_checkpoint())
    if loaded is None:
        raise SystemExit(f"no checkpoint in {run}")
    policy = VLAPolicy(*loaded)
    model = policy.model
    ids, mask = model.text.tokenize([instruction])

    @torch.no_grad()
    def features(d: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        feats, aux, points = [], [], []
        for i in range(0, len(d["goal"]), 64):
            x = torch.from_numpy(d["images"][i:i + 64]).permute(0, 1, 4, 2, 3)
            b = len(x)
            st = torch.from_numpy(policy.norm.normalize(STATE_KEY, d["state"][i:i + 64])) if policy.geometry.state_dim else None
            enc = model.encode(x, ids.expand(b, -1), mask.expand(b, -1), st)
            feats.append(model._decode(enc).reshape(b, -1).numpy())
            if policy.geometry.aux_dim:
                world = (policy.norm.unnormalize(ENV_STATE_KEY, model.aux(enc).numpy())
                         + aux_frame_offset(policy.geometry, d["state"][i:i + 64]))
                aux.append(world[:, 3:6])
            if policy.geometry.keypoints:
                points.append(model.keypoints(x).reshape(b, -1).numpy())
        f = np.concatenate([np.concatenate(feats), d["state"][:, :3]], axis=1)
        return f, (np.concatenate(aux) if aux else None), (np.concatenate(points) if points else None)

    f_tr, aux_tr, kp_tr = features(train)
    f_ho, aux_ho, kp_ho = features(held)
    p_tr, p_ho, alpha = ridge_fit_predict(f_tr, train["goal"], train["seed"], f_ho)
    out: dict[str, Any] = {"ridge": {"train": errors(p_tr, train["goal"], train["seed"]),
                                     "held_out": errors(p_ho, held["goal"], held["seed"]),
                                     "alpha": alpha}}
    if kp_tr is not None and kp_ho is not None:  # do the keypoints alone (no hand position) hold the goal?
        k_tr, k_ho, k_alpha = ridge_fit_predict(kp_tr, train["goal"], train["seed"], kp_ho)
        out["keypoints_ridge"] = {"train": errors(k_tr, train["goal"], train["seed"]),
                                  "held_out": errors(k_ho, held["goal"], held["seed"]), "alpha": k_alpha}
    if aux_tr is not None and aux_ho is not None:
        out["aux_head"] = {"train": errors(aux_tr, train["goal"], train["seed"]),
                           "held_out": errors(aux_ho, held["goal"], held["seed"])}
    return out


def probe_frames(config: str, train_seeds: int, held_out_seeds: int, poses: int, cache: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The training and held-out frames (rendered once, then read from ``cache``)."""
    tag = f"{config}-p{poses}"
    train = render_frames(config, list(range(train_seeds)), poses, cache / f"{tag}-train{train_seeds}.npz")
    held = render_frames(config, list(range(HELD_OUT_START, HELD_OUT_START + held_out_seeds)), poses,
                         cache / f"{tag}-held{held_out_seeds}.npz")
    if set(train["seed"].tolist()) & set(held["seed"].tolist()):
        raise ValueError("training and held-out probe seeds overlap")
    return train, held


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, r in results["methods"].items():
        if "curve" in r:
            steps = [row["step"] for row in r["curve"]]
            line, = ax.plot(steps, [row["held_out"]["error_m"] for row in r["curve"]], label=f"{name} held-out")
            ax.plot(steps, [row["train"]["error_m"] for row in r["curve"]], ls=":", color=line.get_color(),
                    label=f"{name} train")
        else:
            style = {"mean": ("k", "--"), "oracle-linear": ("tab:green", "-."), "oracle-quadratic": ("tab:olive", "-.")}
            color, ls = style.get(name, ("grey", "--"))
            ax.axhline(r["held_out"]["error_m"], color=color, ls=ls, label=f"{name} held-out")
    ax.set_xlabel("training step (batch 32)")
    ax.set_ylabel("goal error (m, mean Euclidean)")
    ax.set_ylim(0, None)
    ax.set_title("reach-v3 goal from the policy's frames")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="metaworld-tiny", help="VLA config whose cameras and image size are probed")
    ap.add_argument("--methods", default="mean,hand,oracle,keypoints,vla-patch-l1,vla-patch-mse,vla-kp-l1,vla-kp-mse")
    ap.add_argument("--train-seeds", type=int, default=200)
    ap.add_argument("--held-out-seeds", type=int, default=100)
    ap.add_argument("--poses", type=int, default=4, help="frames per seed along a noisy expert episode")
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", type=Path, default=Path("runs/probe-frames"), help="folder caching the rendered frames")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/vla_goal_probe.json"))
    ap.add_argument("--policy", type=Path, nargs="*", help="run folders (their latest checkpoint) or checkpoint folders; "
                    "their goal errors go into --out under 'policies'")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    methods = [m for m in args.methods.split(",") if m]
    train, held = probe_frames(args.config, args.train_seeds, args.held_out_seeds, args.poses, args.cache)
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    if args.policy:
        for path in args.policy:
            res = results.setdefault("policies", {})[str(path)] = policy_goal_error(path, train, held)
            print(path, json.dumps(res, indent=1), flush=True)
            args.out.write_text(json.dumps(results, indent=1))
        return 0
    results.update({"config": args.config, "train_seeds": args.train_seeds, "held_out_seeds": args.held_out_seeds,
                    "poses": args.poses, "frames": {"train": len(train["goal"]), "held_out": len(held["goal"])},
                    "cameras_size": list(train["images"].shape[1:4])})
    results.setdefault("methods", {})
    for method in methods:
        if method == "mean":
            m = train["goal"].mean(0)
            results["methods"]["mean"] = {"train": errors(np.broadcast_to(m, train["goal"].shape), train["goal"], train["seed"]),
                                          "held_out": errors(np.broadcast_to(m, held["goal"].shape), held["goal"], held["seed"])}
        elif method == "hand":  # no vision at all: where the hand is says where the goal is, late in an episode
            p_tr, p_ho, alpha = ridge_fit_predict(train["state"][:, :3], train["goal"], train["seed"], held["state"][:, :3])
            results["methods"]["hand"] = {"train": errors(p_tr, train["goal"], train["seed"]),
                                          "held_out": errors(p_ho, held["goal"], held["seed"]), "alpha": alpha}
        elif method == "oracle":
            results["methods"].update(oracle(train, held))
        else:
            results["methods"][method] = train_learner(method, train, held, args.steps, args.eval_every, args.lr,
                                                       args.seed, args.config)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))  # after each method: a long run loses nothing
    for name, r in results["methods"].items():
        print(f"{name:18s} train {r['train']['error_m']:.4f} m   held-out {r['held_out']['error_m']:.4f} m "
              f"({r['held_out']['within_5cm']:.2f} within 5 cm; first frames {r['held_out'].get('start_error_m', float('nan')):.4f} m)")
    plot(results, args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
