"""The trainer: untrained evaluation → SFT warm start → RL (PPO or GRPO) with the memory → evaluation.

Everything goes to the run folder: resolved config, metrics (JSONL + TensorBoard), atomic
checkpoints (model, optimiser, RNG, memory, step and stage), PNG curves and memory panels,
per-episode JSONL, ``summary.json``, and the trained policy as a plain Hugging Face folder.
The same command resumes from the last checkpoint after a kill: completed steps are not repeated
and none is lost (metrics past the checkpoint are dropped and the steps redone, deterministically).
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from atlasva.config import to_dict
from atlasva.envs.pool import InProcessEnvPool
from atlasva.envs.registry import load_spec
from atlasva.eval.evaluate import evaluate_policy
from atlasva.eval.inspect import dump_step
from atlasva.memory import SkillMemory
from atlasva.policy import Policy
from atlasva.rl import reward_variance_filter
from atlasva.rollout.loop import AgentLoop, EpisodeRequest
from atlasva.runs import RunFolder
from atlasva.train.config import TrainConfig
from atlasva.train.estimators import compute_advantages, get_estimator
from atlasva.train.ppo import build_batch, ppo_update
from atlasva.train.sft import build_demos, train_sft

log = logging.getLogger(__name__)

# settings that cannot change a result: not part of a run's identity (its folder hash)
COSMETIC_KEYS = ("trainer.wandb", "trainer.inspect_every", "trainer.save_every")


class SplitOverlapError(ValueError):
    """Training and evaluation levels overlap: a held-out number would not be held out."""


class Trainer:
    def __init__(self, cfg: TrainConfig, name: str = "train") -> None:
        cfg.validate()
        self.cfg = cfg
        self.name = name
        self.t0 = time.time()
        self.run = RunFolder.create(name, to_dict(cfg), root=cfg.run.root, resume=cfg.run.resume, exclude=COSMETIC_KEYS)
        if cfg.policy.model.cpu_threads:
            torch.set_num_threads(int(cfg.policy.model.cpu_threads))
        torch.manual_seed(cfg.trainer.seed)
        pcfg = copy.deepcopy(cfg.policy)
        pcfg.model.value_head = get_estimator(cfg.algorithm.estimator).critic
        self.spec = load_spec(cfg.env.spec)
        self.env_name = self.spec.env
        self.env_config = self.spec.final_config(cfg.env.config)  # the levels the run plays, and hashes
        self.sft_levels, self.rl_levels, self.val_levels = plan_levels(cfg)
        self.sft_seeds = [s for s, _ in self.sft_levels]
        self.rl_seeds = [s for s, _ in self.rl_levels]
        self.val_seeds = [s for s, _ in self.val_levels]
        self.policy = Policy.from_config(pcfg, init_dir=self.run.path / "policy-init")
        self.memory = SkillMemory(cfg.memory)
        self.optimizer = torch.optim.AdamW(self.policy.model.trainable_parameters(), lr=cfg.trainer.lr)
        self.ref_model = None
        self.state: dict[str, Any] = {"stage": "start", "rl_step": 0, "evals": {}, "wall_time_s": 0.0, "stage_wall_s": {}}
        self.pool = InProcessEnvPool()
        self.loop = AgentLoop(self.policy, self.pool, cfg.rollout, gamma_turn=cfg.shaping_gamma())
        self._wandb = None
        self._resume()

    # ------------------------------------------------------------------ checkpoints
    # pack_state / unpack_state are mirror images: the same flat keys written and read
    # (model/…, value_head/…, optim/<param index>/<name>, rng/torch; JSON: stage, step, evals, optimiser groups)
    def pack_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {f"model/{k}": v for k, v in self.policy.model.base.state_dict().items()}
        if self.policy.model.value_head is not None:
            tensors.update({f"value_head/{k}": v for k, v in self.policy.model.value_head.state_dict().items()})
        opt = self.optimizer.state_dict()
        for idx, st in opt["state"].items():
            for k, v in st.items():
                tensors[f"optim/{idx}/{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
        tensors["rng/torch"] = torch.get_rng_state()
        state = {**self.state,
                 "optim_param_groups": [{k: v for k, v in g.items() if k != "params"} for g in opt["param_groups"]]}
        return tensors, state

    def unpack_state(self, tensors: dict[str, Any], state: dict[str, Any]) -> None:
        def section(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix):]: torch.from_numpy(v.copy()) for k, v in tensors.items() if k.startswith(prefix)}

        self.policy.model.base.load_state_dict(section("model/"), strict=True)
        if self.policy.model.value_head is not None:
            self.policy.model.value_head.load_state_dict(section("value_head/"), strict=True)
        opt_state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in section("optim/").items():
            idx, name = key.split("/", 1)
            opt_state.setdefault(int(idx), {})[name] = value
        groups = self.optimizer.state_dict()["param_groups"]
        for g, saved in zip(groups, state.get("optim_param_groups", [])):
            g.update(saved)
        self.optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
        torch.set_rng_state(torch.from_numpy(tensors["rng/torch"].copy()))
        self.state = {k: state[k] for k in ("stage", "rl_step", "evals", "wall_time_s")}
        self.state["stage_wall_s"] = state.get("stage_wall_s", {})  # absent in checkpoints of earlier versions

    def save(self) -> Path:
        self.state["wall_time_s"] += time.time() - self.t0
        self.t0 = time.time()
        tensors, state = self.pack_state()
        return self.run.save_checkpoint(self._ckpt_index(), tensors, state, extra=lambda d: self.memory.save(d / "memory"))

    def _ckpt_index(self) -> int:
        # monotonically increasing across stages: stage rank * 1e6 + RL step
        return _STAGE_ORDER[self.state["stage"]] * 1_000_000 + int(self.state["rl_step"])

    def _resume(self) -> None:
        if not self.cfg.run.resume:
            return
        loaded = self.run.load_checkpoint()
        if loaded is None:
            return
        self.unpack_state(*loaded)
        ckpts = self.run.checkpoints()
        mem_dir = ckpts[-1] / "memory"
        if mem_dir.exists():
            self.memory = SkillMemory.load(mem_dir)
        self.run.truncate_metrics(int(self.state["rl_step"]))
        print(f"resumed from {ckpts[-1].name}: stage {self.state['stage']}, RL step {self.state['rl_step']}")

    # ------------------------------------------------------------------ stages
    def log(self, step: int, metrics: dict[str, Any]) -> None:
        self.run.log_metrics(step, metrics)
        if self.cfg.trainer.wandb:
            if self._wandb is None:
                try:
                    import wandb
                except ImportError as exc:
                    raise RuntimeError("trainer.wandb=true needs the `wandb` package (pip install wandb)") from exc
                self._wandb = wandb.init(project="atlasva", name=self.run.path.name, config=to_dict(self.cfg))
            self._wandb.log(metrics, step=step)

    def evaluate(self, stage: str) -> dict[str, Any]:
        snap = self.memory.snapshot() if self.cfg.memory.enable else None
        episodes, summary = evaluate_policy(
            self.policy, self.env_name, self.val_seeds, env_config=self.env_config, rollout=self.cfg.rollout,
            snapshot=snap, batch_size=self.cfg.eval.batch_size, temperature=0.0, desc=f"eval {stage}",
        )
        self.run.write_episodes(stage, [e.summary_record() for e in episodes])
        self.run.record_levels(f"eval:{stage}", [(e.seed, e.level_hash) for e in episodes])
        self.state["evals"][stage] = summary
        print(f"[{stage}] success {summary['success_rate']:.3f} "
              f"(95% CI {summary['success_ci95'][0]:.3f}-{summary['success_ci95'][1]:.3f}), "
              f"turns {summary['mean_turns']:.2f}, format-valid {summary['format_valid_rate']:.2f}")
        return summary

    def _timed(self, part: str, fn: Any, *args: Any) -> Any:
        """Run ``fn`` and add its wall time to ``state["stage_wall_s"][part]`` (kept across resumes)."""
        t = time.time()
        out = fn(*args)
        times = self.state["stage_wall_s"]
        times[part] = round(times.get(part, 0.0) + time.time() - t, 1)
        return out

    def train(self) -> dict[str, Any]:
        cfg = self.cfg
        stages = cfg.eval.stages
        if self.state["stage"] == "start":
            if "untrained" in stages:
                self._timed("eval:untrained", self.evaluate, "untrained")
            self.state["stage"] = "untrained_done"
            self.save()
        if self.state["stage"] == "untrained_done":
            if cfg.sft.enable:
                self._timed("sft", self._sft)
                if "sft" in stages:
                    self._timed("eval:sft", self.evaluate, "sft")
            self.state["stage"] = "rl"
            self.save()
        if self.state["stage"] == "rl":
            self._timed("rl", self._rl_loop)
            if "rl" in stages:
                self._timed("eval:rl", self.evaluate, "rl")
            self.state["stage"] = "done"
            self.save()
        return self.finish()

    def _sft(self) -> None:
        cfg = self.cfg
        snap = self.memory.snapshot() if cfg.memory.enable else None
        demos = build_demos(self.policy, self.env_name, self.env_config, self.sft_seeds, rollout=cfg.rollout, snapshot=snap)
        self.run.record_levels("sft", self.sft_levels)
        stats = train_sft(self.policy, demos, epochs=cfg.sft.epochs, lr=cfg.sft.lr, batch_size=cfg.sft.batch_size,
                          seed=cfg.trainer.seed)
        print(f"[sft] {int(stats['sft/demos'])} demonstrations ({len(self.sft_seeds)} levels), "
              f"final loss {stats['sft/final_loss']:.3f}")

    def _reference_model(self) -> Any:
        """The KL reference: the policy as RL began, kept in the run folder so a resumed run uses the same one."""
        from safetensors.torch import load_model, save_model  # these handle tied embeddings

        ref = copy.deepcopy(self.policy.model)
        path = self.run.path / "reference.safetensors"
        if path.exists():
            load_model(ref.base, str(path))
        else:
            tmp = path.with_name(".reference.tmp")
            save_model(ref.base, str(tmp))
            tmp.replace(path)
        ref.eval()
        return ref

    def _rl_loop(self) -> None:
        cfg, tc = self.cfg, self.cfg.trainer
        if cfg.algorithm.kl_coef > 0:
            self.ref_model = self._reference_model()
        sampling = copy.deepcopy(self.policy.config.sampling)
        sampling.temperature = tc.temperature
        bar = tqdm(total=tc.steps, initial=self.state["rl_step"], desc="rl", unit="step", disable=None)
        recent: list[float] = []
        while self.state["rl_step"] < tc.steps:
            step = self.state["rl_step"]
            t_step = time.perf_counter()
            seeds = self.rl_seeds[step * tc.levels_per_step : (step + 1) * tc.levels_per_step]
            reqs = [EpisodeRequest(self.env_name, s, dict(self.env_config), group_id=f"{step}-{s}")
                    for s in seeds for _ in range(tc.group_size)]
            snap = self.memory.snapshot() if cfg.memory.enable else None
            self.policy.model.eval()
            result = self.loop.run(reqs, snap, seed=tc.seed * 100_003 + step, sampling=sampling)
            if cfg.memory.enable:
                self.memory.update(result.episodes)
            batch = build_batch(result)
            values = None
            if self.policy.model.value_head is not None:
                with torch.no_grad():
                    values = self.policy.model.score(batch.encoded, positions=batch.loss_mask.bool(),
                                                     with_values=True, temperature=tc.temperature).values
                    width = batch.loss_mask.shape[1]
                    values = values[:, :width] * batch.loss_mask
            adv = self._advantages(batch, values, result, step)
            if adv is not None and tc.inspect_every and (step == 0 or (step + 1) % tc.inspect_every == 0):
                dump_step(self.run.path, step + 1, batch, adv.advantages, values, result, self.policy.processor)
            upd: dict[str, float] = {"rl/skipped_batch": 1.0}
            if adv is not None:
                keep, scale = None, 1.0
                if cfg.algorithm.filter_top_p < 1.0:
                    scores = torch.tensor([result.episodes[i].total_reward for i in batch.episode_index])
                    filt = reward_variance_filter(scores, batch.group_ids, top_p=cfg.algorithm.filter_top_p,
                                                  traj_ids=None if cfg.rollout.concat else batch.episode_index)
                    keep, scale = filt.kept_indices, filt.scale
                rng = np.random.default_rng([tc.seed, step])
                upd = ppo_update(self.policy, self.optimizer, batch, adv, values, cfg.algorithm, tc, rng=rng,
                                 ref_model=self.ref_model, keep=keep, scale=scale)
                upd["rl/skipped_batch"] = 0.0
            eps = result.episodes
            success = float(np.mean([e.success for e in eps]))
            recent = (recent + [success])[-5:]
            metrics = {
                "train/success_rate": success,
                "train/reward": float(np.mean([e.total_reward for e in eps])),
                "train/env_reward": float(np.mean([sum(t.rewards["env"] for t in e.turns) for e in eps])),
                "train/shaping": float(np.mean([sum(t.rewards.get("shaping", 0.0) for t in e.turns) for e in eps])),
                "train/format_valid": float(np.mean([e.format_valid_rate() for e in eps])),
                "train/turns": float(np.mean([e.n_turns for e in eps])),
                "train/adv_abs_mean": (float((adv.advantages.abs() * batch.loss_mask).sum() / batch.loss_mask.sum().clamp(min=1))
                                       if adv is not None else float("nan")),
                "memory/version": float(self.memory.version if hasattr(self.memory, "version") else -1),
                "time/step_s": time.perf_counter() - t_step,
                **result.stats,
                **upd,
            }
            if tc.val_every and (step + 1) % tc.val_every == 0:
                snap = self.memory.snapshot() if cfg.memory.enable else None
                _, val = evaluate_policy(self.policy, self.env_name, self.val_seeds[: tc.val_episodes],
                                         env_config=self.env_config, rollout=cfg.rollout, snapshot=snap,
                                         temperature=0.0, desc="val")
                metrics["val/success_rate"] = val["success_rate"]
            self.state["rl_step"] = step + 1
            self.run.record_levels("rl", self.rl_levels[: (step + 1) * tc.levels_per_step])
            self.log(step + 1, metrics)
            bar.update(1)
            bar.set_postfix(success=f"{np.mean(recent):.2f}", refresh=True)
            if (step + 1) % tc.save_every == 0 or step + 1 == tc.steps:
                self.save()
        bar.close()

    def _advantages(self, batch: Any, values: torch.Tensor | None, result: Any, step: int) -> Any:
        """The estimator's advantages, or None (with a warning) when rewards, values or advantages are not
        finite: the batch is skipped instead of ending the run or poisoning the weights."""
        from atlasva.rl import all_finite

        try:
            adv = compute_advantages(batch, values, result, self.cfg.algorithm)
        except ValueError as exc:  # the estimators refuse NaN/inf inputs on policy tokens
            if all_finite(batch.token_rewards) and (values is None or all_finite(values)):
                raise  # not a numeric problem: a bug worth a traceback
            log.warning("RL step %d: skipped the batch (%s)", step + 1, exc)
            return None
        if not all_finite(adv.advantages) or (adv.returns is not None and not all_finite(adv.returns)):
            log.warning("RL step %d: skipped the batch (non-finite advantages)", step + 1)
            return None
        return adv

    def finish(self) -> dict[str, Any]:
        policy_dir = self.run.path / "policy"
        if not policy_dir.exists():
            self.policy.save_pretrained(policy_dir)
        if self.cfg.memory.enable:
            try:
                self.memory.render_png(self.run.path / "memory.png")
            except ValueError:
                pass  # nothing learned yet (e.g. steps=0)
        plot_curves(self.run)
        wall = self.state["wall_time_s"]
        splits = self.run.split_report()
        if splits["overlap"]:  # cannot happen through check_disjoint; a summary must never claim it anyway
            raise SplitOverlapError(f"levels.jsonl lists {splits['overlap']} level(s) both trained and evaluated on")
        summary = self.run.write_summary(self.state["evals"], wall_time_s=wall, env=self.env_name,
                                         config=self.name, rl_steps=self.state["rl_step"], splits=splits,
                                         stage_wall_s=self.state["stage_wall_s"])
        self.run.close()
        summary["run_dir"] = str(self.run.path)
        return summary


def plan_levels(cfg: TrainConfig) -> tuple[list[tuple[int, str]], list[tuple[int, str]], list[tuple[int, str]]]:
    """The (seed, level hash) pairs a run trains on (SFT, RL) and evaluates on, hashed under the run's final
    env config; raises :class:`SplitOverlapError` when evaluation would touch a training level."""
    spec = load_spec(cfg.env.spec)
    n_sft = cfg.sft.levels if cfg.sft.enable else 0
    n_train = n_sft + cfg.trainer.steps * cfg.trainer.levels_per_step
    train = spec.levels("train", max(1, n_train), overrides=cfg.env.config)
    held_out = spec.levels(cfg.eval.split, cfg.eval.episodes, overrides=cfg.env.config,
                           distinct=cfg.eval.distinct_levels)
    check_disjoint(train, held_out, cfg.eval.split)
    return train[:n_sft], train[n_sft:], held_out


def check_disjoint(train: list[tuple[int, str]], held_out: list[tuple[int, str]], split: str) -> None:
    """Refuse a run whose evaluation levels include a level it trains on (by seed or by level hash)."""
    seeds = {s for s, _ in train} & {s for s, _ in held_out}
    hashes = {h for _, h in train} & {h for _, h in held_out}
    if seeds or hashes:
        raise SplitOverlapError(
            f"eval.split={split!r} shares {len(hashes)} level(s) and {len(seeds)} seed(s) with the training levels; "
            "held-out numbers need disjoint levels: evaluate on the 'validation' split"
        )


_STAGE_ORDER = {"start": 0, "untrained_done": 1, "rl": 2, "done": 3}


def plot_curves(run: RunFolder) -> Path | None:
    rows = run.read_metrics()
    keys = ["train/success_rate", "train/reward", "train/format_valid", "rl/pg_loss"]
    series = {k: [(r["step"], r[k]) for r in rows if k in r] for k in keys}
    if not any(series.values()):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3))
    for ax, k in zip(axes, keys):
        if series[k]:
            xs, ys = zip(*series[k])
            ax.plot(xs, ys, marker=".")
        ax.set_title(k)
        ax.set_xlabel("RL step")
    fig.tight_layout()
    path = run.path / "curves.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
