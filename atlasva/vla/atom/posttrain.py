"""AtomVLA Stage II: offline GRPO on logged demo states against the latent world model's energies
(``atlasva vla posttrain CONFIG``; no simulator in the loop).

Per step, ``states_per_step`` demo frames s (each with a whole world-model horizon ahead) are drawn; for each,
``group_size`` candidate chunks a_i ~ π_θ(· | s) (:mod:`.policy_dist`: Gaussian around a regression head,
Flow-SDE for flow / dit heads). Rewards, each switchable by its weight::

    r_sub  = −‖P(E(o_t), s_t, a_i) − E(g_k)‖₁     g_k: the boundary frame of this demo's current subtask
    r_goal = −‖P(E(o_t), s_t, a_i) − E(g_final)‖₁ g_final: this demo's last frame
    r_dev  = −mean |a_i − a_expert|                (normalised actions, valid steps)
    R      = w_sub·z(r_sub) + w_goal·z(r_goal) + w_dev·z(r_dev)

where z(·) standardises a term within its group (so the weights, not the terms' units, set their mix;
``atlasva.rl.grpo_advantages`` does it), and the advantage is R normalised within the group again. The
loss is ``atlasva.rl.ppo_policy_loss`` on the chunk log-probabilities (one "token" per chunk; the clip acts
from the second of ``epochs`` passes) + ``kl_coef`` · ``atlasva.rl.kl_loss`` to the frozen SFT policy
(its log-probabilities of the same candidates). The post-trained checkpoint keeps the SFT checkpoint's
format, so ``atlasva vla eval CONFIG eval.source=posttrain`` evaluates it (the mean chunk, as SFT's).
"""

from __future__ import annotations

import copy
import json
import sys
import time
from typing import Any

import numpy as np

from atlasva.rl import all_finite, grpo_advantages, kl_loss, ppo_policy_loss
from atlasva.vla.atom.config import PosttrainSection, conditioned_instruction
from atlasva.vla.atom.policy_dist import (
    flow_sde_log_prob,
    flow_sde_sample,
    gaussian_log_prob,
    sample_gaussian,
)
from atlasva.vla.atom.world_model import (
    DemoData,
    LoadedWorldModel,
    WorldModel,
    load_demos,
    load_sft_model,
    load_world_model,
    sft_checkpoint,
)
from atlasva.vla.model import FLOW_HEADS

PT_NOT_IDENTITY = ("eval", "collect.workers", "atom.posttrain.num_threads", "atom.posttrain.log_every",
                   "atom.posttrain.checkpoint_every", "atom.worldmodel.num_threads")


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def posttrain_run(cfg: Any, resume: bool = True) -> Any:
    from atlasva.config import to_dict
    from atlasva.runs import RunFolder
    from atlasva.vla.sim import cfg_name

    return RunFolder.create(f"{cfg_name(cfg)}-posttrain", to_dict(cfg), root=cfg.run.root, resume=resume,
                            exclude=PT_NOT_IDENTITY)


class ChunkPolicy:
    """A VLA as a stochastic chunk policy: ``sample`` G candidates per state (with their log-probabilities
    under this policy), ``log_prob`` of given candidates (with gradients)."""

    def __init__(self, model: Any, section: PosttrainSection, log_std: Any | None = None) -> None:
        self.model = model
        self.section = section
        self.flow = model.geometry.head in FLOW_HEADS
        self.log_std = log_std  # [A] parameter (regression heads)

    def _mean(self, enc: Any) -> Any:
        return self.model.action_head(self.model._decode(enc))

    def _velocity(self, enc: Any, group: int) -> Any:
        from atlasva.vla.model import Encoding

        rep = Encoding(*(t.repeat_interleave(group, 0) if t is not None else None for t in enc))
        return lambda x, t: self.model.velocity(rep, x, t)

    def sample(self, enc: Any, group: int, generator: Any) -> tuple[Any, Any]:
        """(candidates [B, G, H, A], sample record: the chunks, or the SDE paths [K+1, B·G, H, A])."""
        import torch

        with torch.no_grad():
            if not self.flow:
                cands = sample_gaussian(self._mean(enc), self.log_std.detach(), group, generator)
                return cands, cands
            g = self.model.geometry
            noise = torch.randn((enc.context.shape[0] * group, g.chunk, g.action_dim), generator=generator)
            path = flow_sde_sample(self._velocity(enc, group), noise, g.flow_steps, self.section.sde_noise, generator)
            return path[-1].reshape(-1, group, g.chunk, g.action_dim), path

    def log_prob(self, enc: Any, record: Any, group: int, valid: Any) -> Any:
        """[B·G] log π(candidate | state); ``valid`` [B·G, H]."""
        if not self.flow:
            mean = self._mean(enc).repeat_interleave(group, 0)
            return gaussian_log_prob(record.flatten(0, 1), mean, self.log_std, valid)
        return flow_sde_log_prob(self._velocity(enc, group), record, self.section.sde_noise, valid)


def residual_log_std(model: Any, data: DemoData, inputs: Any, frames: np.ndarray, min_std: float, scale: float) -> Any:
    """log σ per action dimension: the SFT regression head's residual std on ``frames`` (valid steps)."""
    import torch

    with torch.no_grad():
        enc = model.encode(*inputs(frames))
        mean = model.action_head(model._decode(enc)).numpy()
    target, valid = data.chunks(frames, model.geometry.chunk)
    err = (mean - target)[valid.astype(bool)]  # [M, A]
    std = np.maximum(scale * np.sqrt((err ** 2).mean(0)), min_std)
    return torch.tensor(np.log(std), dtype=torch.float32)


def rewards(wm: LoadedWorldModel | None, data: DemoData, frames: np.ndarray, cands: np.ndarray, section: PosttrainSection,
            ) -> dict[str, np.ndarray]:
    """Each enabled reward term [B, G] of candidates [B, G, H, A] (normalised) at demo ``frames`` [B]."""
    import torch

    b, g, h, _ = cands.shape
    out: dict[str, np.ndarray] = {}
    if section.w_dev:
        expert, valid = data.chunks(frames, h)
        diff = np.abs(cands - expert[:, None]).mean(-1)  # [B, G, H]
        out["dev"] = -(diff * valid[:, None]).sum(-1) / np.maximum(valid.sum(-1), 1)[:, None]
    if section.w_sub or section.w_goal:
        assert wm is not None
        model: WorldModel = wm.model
        k = model.horizon
        z = torch.from_numpy(np.repeat(wm.latents[frames], g, 0))
        s = torch.from_numpy(np.repeat(data.states[frames], g, 0)) if model.state_dim else None
        with torch.no_grad():
            zp, _ = model.predict(z, s, torch.from_numpy(cands[:, :, :k].reshape(b * g, k, -1)))
            if section.w_sub:
                goal = torch.from_numpy(np.repeat(wm.latents[data.labels.subgoal[frames]], g, 0))
                out["sub"] = -model.energy(zp, goal).numpy().reshape(b, g)
            if section.w_goal:
                goal = torch.from_numpy(np.repeat(wm.latents[data.labels.final[frames]], g, 0))
                out["goal"] = -model.energy(zp, goal).numpy().reshape(b, g)
    return out


def combine_rewards(terms: dict[str, np.ndarray], weights: dict[str, float]) -> Any:
    """R [B·G] = Σ w · (term standardised within its group of G), through ``atlasva.rl.grpo_advantages``."""
    import torch

    first = next(iter(terms.values()))
    b, g = first.shape
    ids = np.repeat(np.arange(b), g)
    mask = torch.ones(b * g, 1)
    total = torch.zeros(b * g)
    for name, r in terms.items():
        total += weights[name] * grpo_advantages(torch.from_numpy(r.reshape(-1)).float(), mask, ids)[:, 0]
    return total


def posttrain(cfg: Any) -> dict[str, Any]:
    import torch
    from tqdm import tqdm

    from atlasva.vla.sim import _optim_tensors, _restore_optim

    sec = cfg.atom.posttrain
    if sec.group_size < 2:
        raise ValueError(f"atom.posttrain.group_size must be ≥ 2 (GRPO needs a group), got {sec.group_size}")
    if min(sec.w_sub, sec.w_goal, sec.w_dev) < 0 or not (sec.w_sub or sec.w_goal or sec.w_dev):
        raise ValueError(f"atom.posttrain weights must be ≥ 0 with one > 0, got w_sub={sec.w_sub}, "
                         f"w_goal={sec.w_goal}, w_dev={sec.w_dev}")
    if sec.epochs < 1 or sec.states_per_step < 1:
        raise ValueError("atom.posttrain.epochs and states_per_step must be ≥ 1")
    torch.set_num_threads(max(1, sec.num_threads))
    t0 = time.time()
    sft_path, sft_tensors, sft_state = sft_checkpoint(cfg)
    model, normalizer = load_sft_model(sft_tensors, sft_state)
    reference = copy.deepcopy(model).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    data = load_demos(cfg, normalizer)
    wm = load_world_model(cfg) if (sec.w_sub or sec.w_goal) else None
    g = model.geometry
    horizon = wm.model.horizon if wm is not None else g.chunk
    if horizon > g.chunk:
        raise ValueError(f"the world model's horizon {horizon} is longer than the policy's chunk {g.chunk}")
    if wm is not None and len(wm.latents) != len(data.actions):
        raise ValueError(f"the world model encoded {len(wm.latents)} frames, the dataset has {len(data.actions)}; "
                         f"re-run `atlasva vla worldmodel`")
    frames = np.flatnonzero(np.arange(len(data.actions)) + horizon <= data.last)
    run = posttrain_run(cfg, resume=cfg.run.resume)

    # instructions as the SFT policy read them
    if cfg.atom.subtasks:
        texts = [conditioned_instruction(t, s) for t, s in zip(data.labels.task, data.labels.text)]
    else:
        texts = [data.tasks[i] for i in data.task_id]
    token_cache: dict[str, Any] = {}

    def inputs(idx: np.ndarray) -> tuple[Any, ...]:
        from atlasva.vla.sim import _pad

        for t in {texts[i] for i in idx}:
            if t not in token_cache:
                token_cache[t] = model.text.tokenize([t])
        length = max(token_cache[texts[i]][0].shape[1] for i in idx)
        ids = torch.cat([_pad(token_cache[texts[i]][0], length, model.text.pad_id) for i in idx])
        mask = torch.cat([_pad(token_cache[texts[i]][1], length, 0) for i in idx])
        x = torch.from_numpy(data.images[idx]).permute(0, 1, 4, 2, 3)  # uint8 [B, S, 3, H, W]
        st = torch.from_numpy(data.states[idx]) if data.states is not None and g.state_dim else None
        return x, ids, mask, st

    log_std = ref_log_std = None
    if g.head not in FLOW_HEADS:
        rng0 = np.random.default_rng(sec.seed)
        init = residual_log_std(model, data, inputs, rng0.choice(frames, size=min(256, len(frames)), replace=False),
                                sec.min_std, sec.init_std_scale)
        log_std = torch.nn.Parameter(init.clone(), requires_grad=sec.learn_std)
        ref_log_std = init.clone()
    policy = ChunkPolicy(model, sec, log_std)
    ref_policy = ChunkPolicy(reference, sec, ref_log_std)
    params = [p for p in model.parameters() if p.requires_grad] + ([log_std] if log_std is not None and sec.learn_std else [])
    opt = torch.optim.AdamW(params, lr=sec.lr, weight_decay=0.0)

    progress_dir = sft_path / "progress"
    base_state = {k: v for k, v in sft_state.items() if k not in ("step", "optimizer_groups")}

    def save(step: int) -> None:
        tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
        if log_std is not None:
            tensors["policy/log_std"] = log_std.detach()
        opt_tensors, groups = _optim_tensors(opt)
        tensors.update(opt_tensors)
        run.save_checkpoint(step, tensors, {**base_state, "optimizer_groups": groups, "sft_run": str(sft_path),
                                            **({"progress_dir": str(progress_dir)} if progress_dir.exists() else {}),
                                            "posttrain": {"w_sub": sec.w_sub, "w_goal": sec.w_goal, "w_dev": sec.w_dev}})

    start = 0
    ckpt = run.load_checkpoint()
    if ckpt is not None:
        tensors, state = ckpt
        model.load_tensors({k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}, state["geometry"])
        if log_std is not None and "policy/log_std" in tensors:
            log_std.data.copy_(torch.as_tensor(tensors["policy/log_std"]))
        _restore_optim(opt, tensors, state["optimizer_groups"])
        start = int(state["step"])
        run.truncate_metrics(start)
        _progress(f"posttrain: resuming {run.path} from step {start}")
    weights = {"sub": sec.w_sub, "goal": sec.w_goal, "dev": sec.w_dev}
    model.eval()  # no dropout anywhere; eval mode keeps old/new log-probs of one state equal at the first pass
    skipped = 0
    rows: list[dict[str, float]] = []
    bar = tqdm(range(start, sec.steps), desc="posttrain", unit="step", disable=None)
    for step in bar:
        rng = np.random.default_rng([sec.seed, step])
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        idx = rng.choice(frames, size=min(sec.states_per_step, len(frames)), replace=False)
        x, ids, mask, st = inputs(idx)
        b, gsz = len(idx), sec.group_size
        _, valid = data.chunks(idx, g.chunk)
        valid_t = torch.from_numpy(np.repeat(valid, gsz, 0))
        with torch.no_grad():
            enc_old = model.encode(x, ids, mask, st)
            cands, record = policy.sample(enc_old, gsz, gen)
            old_lp = policy.log_prob(enc_old, record, gsz, valid_t)
            ref_lp = ref_policy.log_prob(reference.encode(x, ids, mask, st), record, gsz, valid_t)
        terms = rewards(wm, data, idx, cands.numpy(), sec)
        total = combine_rewards(terms, weights)
        adv = grpo_advantages(total, torch.ones(b * gsz, 1), np.repeat(np.arange(b), gsz))
        one = torch.ones(b * gsz, 1)
        for _ in range(sec.epochs):
            enc = model.encode(x, ids, mask, st)
            lp = policy.log_prob(enc, record, gsz, valid_t)
            pg, stats = ppo_policy_loss(lp[:, None], old_lp[:, None], adv, one, clip_ratio=sec.clip_ratio)
            kl = kl_loss(lp[:, None], ref_lp[:, None], one, kind=sec.kl_kind)
            loss = pg + sec.kl_coef * kl
            if not all_finite(loss):
                skipped += 1
                continue
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, sec.grad_clip)
            opt.step()
        row = {"pt/pg_loss": pg.item(), "pt/kl": kl.item(), "pt/clipfrac": float(stats["clipfrac"]),
               "pt/approx_kl": float(stats["approx_kl"]), "pt/reward": float(total.mean()),
               **{f"pt/r_{k}": float(v.mean()) for k, v in terms.items()}}
        if log_std is not None:
            row["pt/std_mean"] = float(log_std.detach().exp().mean())
        rows.append(row)
        done = step + 1
        if done % sec.log_every == 0 or done == sec.steps:
            means = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
            run.log_metrics(done, {**means, "pt/skipped": skipped})
            bar.set_postfix({k.split("/")[1]: f"{v:.3f}" for k, v in means.items() if k in ("pt/kl", "pt/r_sub", "pt/r_dev")})
            rows = []
        if done % sec.checkpoint_every == 0 or done == sec.steps:
            save(done)
    if start >= sec.steps and not run.checkpoints():
        save(start)
    keys = ["pt/pg_loss", "pt/kl", "pt/clipfrac"] + [f"pt/r_{k}" for k, w in weights.items() if w]
    run.plot_metrics(keys)
    summary = {"wall_time_s": time.time() - t0, "steps": sec.steps, "states": int(len(frames)), "skipped_updates": skipped,
               "weights": weights, "log_prob": "flow-sde" if policy.flow else "gaussian",
               "final_std": log_std.detach().exp().tolist() if log_std is not None else None,
               "sft_run": str(sft_path), "world_model": str(wm.path) if wm is not None else None}
    (run.path / "posttrain.json").write_text(json.dumps(summary, indent=1))
    run.close()
    _progress(f"posttrain done: {run.path} ({summary['wall_time_s']:.0f}s, {skipped} skipped updates)")
    return summary


__all__ = ["ChunkPolicy", "combine_rewards", "posttrain", "posttrain_run", "rewards"]
