"""The training config: one dataclass tree, loaded from ``configs/<name>.yaml`` with dotted overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from atlasva.integrations.verl.config import ENGINES, VerlSection
from atlasva.memory import MemoryConfig
from atlasva.policy.config import PolicyConfig
from atlasva.rollout.loop import RolloutConfig
from atlasva.runs import RunConfig
from atlasva.train.estimators import get_estimator

STAGES = ("untrained", "sft", "rl")


@dataclass
class EnvSection:
    spec: str = "frozenlake"  # configs/envs/<spec>.yaml (env name, config, splits)
    # overrides of the spec's env config (default: the demo's — short answers, gymnasium's fixed corners)
    # (format_penalty: a turn with broken format costs 0.1, so RL repairs format drift instead of ignoring it;
    # format_reward 0: FrozenLake's +0.02 per well-formed turn was learned as "take more turns" — measured:
    # turns 1.7 -> 3.1 over 30 GRPO steps and 32 of 200 held-out episodes out of turns)
    config: dict[str, Any] = field(
        default_factory=lambda: {
            "format": "no_think", "random_start_goal": False, "format_penalty": 0.1, "format_reward": 0.0,
        }
    )


@dataclass
class AlgorithmConfig:
    estimator: str = "bi_level_gae"  # gae | bi_level_gae | turn_gae | grpo | turn_grpo
    # discount between turns of bi_level_gae, turn_gae and turn_grpo; the memory's shaping term always uses
    # the estimator's own turn discount (TrainConfig.shaping_gamma: 1 for grpo and gae), so it telescopes
    gamma_turn: float = 0.95
    gamma_token: float = 1.0
    lam: float = 1.0
    whiten: bool = True  # masked whitening of GAE advantages
    norm_by_std: bool = True  # GRPO
    clip_ratio: float = 0.2
    clip_ratio_c: float = 0.0  # > 1 turns on dual-clip
    value_clip: float = 0.2
    vf_coef: float = 0.5
    detach_critic: bool = True  # the value head reads the policy's hidden states without moving them
    kl_coef: float = 0.05  # KL to the reference (the policy at the start of RL); 0 = off
    kl_kind: str = "k3"
    entropy_coef: float = 0.0
    loss_agg: str = "token-mean"
    filter_top_p: float = 1.0  # reward-variance group filter (1 = off)


@dataclass
class TrainerSection:
    steps: int = 30
    levels_per_step: int = 16
    group_size: int = 1  # episodes per level per step (GRPO needs > 1)
    lr: float = 3e-4
    ppo_epochs: int = 2
    minibatch_size: int = 16
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    temperature: float = 1.0
    save_every: int = 5
    val_every: int = 0  # validation on held-out levels during RL (0 = off)
    val_episodes: int = 32
    seed: int = 0
    wandb: bool = False  # also log to Weights & Biases (needs `wandb`; offline mode is fine)
    inspect_every: int = 5  # dump a few episodes' tokens for `atlasva inspect` (0 = off; the first step always)


@dataclass
class SFTSection:
    enable: bool = True
    levels: int = 400  # solver demonstrations from this many training levels
    epochs: int = 3
    lr: float = 2e-3
    batch_size: int = 16


@dataclass
class EvalSection:
    episodes: int = 200  # held-out episodes per stage
    split: str = "validation"
    stages: list[str] = field(default_factory=lambda: ["untrained", "sft", "rl"])
    batch_size: int = 64
    distinct_levels: bool = True  # each held-out episode on a level of its own (false: seeds may repeat levels)


def _demo_policy() -> PolicyConfig:
    cfg = PolicyConfig()
    cfg.model.cpu_threads = 1  # the tiny model decodes several times faster on one thread of a busy CPU
    return cfg


def _demo_memory() -> MemoryConfig:
    # SFT sees prompts without exemplars and skill lines; a tiny model cannot absorb them appearing mid-RL
    # (measured: success collapsed from 0.31 to 0 after the first memory update). Real models: turn them on.
    # Heuristic atlases only: with atlases learned during RL the same run ends 0.135 lower on held-out lakes
    # (0.660 vs 0.795, paired [-0.188, -0.082]; benchmarks/README.md → the memory × estimator ablation).
    return MemoryConfig(inject_exemplars=False, inject_skills=False, learn_atlases=False)


def _demo_algorithm() -> AlgorithmConfig:
    return AlgorithmConfig(estimator="grpo")  # 4 episodes per level; shaping γ = 1, so it telescopes


def _demo_trainer() -> TrainerSection:
    return TrainerSection(levels_per_step=4, group_size=4, lr=1e-4)


def _demo_sft() -> SFTSection:
    # 8 epochs: 0.675 held-out after SFT (3 epochs: 0.240, 5: 0.595) — the warm start carries the demo
    return SFTSection(epochs=8)


@dataclass
class TrainConfig:
    env: EnvSection = field(default_factory=EnvSection)
    policy: PolicyConfig = field(default_factory=_demo_policy)
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig(max_tokens_per_turn=24))
    algorithm: AlgorithmConfig = field(default_factory=_demo_algorithm)
    trainer: TrainerSection = field(default_factory=_demo_trainer)
    sft: SFTSection = field(default_factory=_demo_sft)
    memory: MemoryConfig = field(default_factory=_demo_memory)
    eval: EvalSection = field(default_factory=EvalSection)
    run: RunConfig = field(default_factory=RunConfig)
    engine: str = "atlasva"  # atlasva (this process) | verl (verl's distributed PPO; see docs/engines.md)
    verl: VerlSection = field(default_factory=VerlSection)

    def shaping_gamma(self) -> float:
        """The γ of the memory's shaping term: the discount the estimator applies between turns."""
        return float(get_estimator(self.algorithm.estimator).turn_discount(self.algorithm))

    def validate(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine={self.engine!r}; accepted: {', '.join(ENGINES)}")
        a = self.algorithm
        est = get_estimator(a.estimator)
        if est.layout == "turn" and self.rollout.concat:
            raise ValueError(f"algorithm.estimator={a.estimator} works on one sample per turn: set rollout.concat=false")
        if est.layout == "concat" and not self.rollout.concat:
            hint = " (for one sample per turn use turn_gae)" if a.estimator == "gae" else ""
            raise ValueError(f"algorithm.estimator={a.estimator} needs whole episodes: set rollout.concat=true{hint}")
        if est.groups and self.trainer.group_size < 2:
            raise ValueError(f"{a.estimator} compares episodes of one level: set trainer.group_size >= 2")
        shaping_on = self.memory.enable and self.memory.shaping
        if shaping_on and a.estimator == "gae" and a.gamma_token != 1.0:
            raise ValueError(
                f"algorithm.gamma_token={a.gamma_token} with gae and memory shaping: token GAE discounts per "
                "generated token, so no per-turn potential difference telescopes; set algorithm.gamma_token=1, "
                "use bi_level_gae (discounts turns by gamma_turn), or memory.shaping=false"
            )
        for name, value in (("algorithm.gamma_turn", a.gamma_turn), ("algorithm.gamma_token", a.gamma_token)):
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name}={value}; accepted: 0 < gamma <= 1")
        sampling = self.policy.sampling
        if sampling.top_p < 1.0 or sampling.top_k > 0:
            raise ValueError(
                f"policy.sampling.top_p={sampling.top_p}, top_k={sampling.top_k}: RL needs the behaviour log-probs "
                "of the distribution it samples from, and the trainer scores the full distribution at the "
                "sampling temperature; set top_p=1.0 and top_k=0 for training (they are fine for evaluation)"
            )
        for s in self.eval.stages:
            if s not in STAGES:
                raise ValueError(f"eval.stages holds {s!r}; accepted: {', '.join(STAGES)}")
        if self.policy.backend not in ("hf", "vllm"):
            raise ValueError("training needs a local model: policy.backend must be 'hf' or 'vllm'")
