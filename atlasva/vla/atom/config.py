"""The ``atom`` section of a VLA config: AtomVLA's subtask segmentation, subtask-conditioned SFT with a
progress head, the latent world model and offline GRPO (``atlasva vla segment|train|worldmodel|posttrain``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from atlasva.policy.config import OpenAIConfig


@dataclass
class SegmentSection:
    #: auto: a task's template where one exists (built-in or ``templates``), else the generic event cut;
    #: template: every task must have one; events: the generic cut for all
    method: str = "auto"
    #: task name -> [[subtask text, end event], ...], the last event "end"; adds to / replaces the built-ins
    templates: dict[str, Any] = field(default_factory=dict)
    min_segments: int = 2
    max_segments: int = 5
    min_length: int = 4  # frames
    hold: int = 3  # frames a gripper side or a descent must last to count
    speed_window: int = 5
    speed_min_ratio: float = 0.5
    object_move_m: float = 0.01
    object_lift_m: float = 0.02
    descend_speed: float = 0.004
    grip_min_range: float = 0.5
    #: name generic segments with an OpenAI-compatible LLM (``llm``); a malformed answer keeps the rule names
    llm_names: bool = False
    llm: OpenAIConfig = field(default_factory=OpenAIConfig)
    sheet_episodes: int = 4  # rows (episodes) of each task's boundary-frame contact sheet


@dataclass
class ProgressSection:
    """The progress head: a small MLP on the SFT policy's frozen observation features (keypoints or pooled
    vision tokens ⊕ state) and the task that predicts which subtask is under way."""

    steps: int = 600
    batch_size: int = 256
    lr: float = 0.002
    hidden: int = 128
    holdout_fraction: float = 0.1  # demos per task held out to measure it against the segmenter's labels
    seed: int = 0


@dataclass
class WorldModelSection:
    #: policy: the SFT VLA's own frozen vision tower (keypoints, or pooled tokens without a keypoint path);
    #: vjepa2: a V-JEPA 2 encoder (transformers) from vjepa2_path, or a tiny one trained here by its masked
    #: latent objective on the dataset's frames
    encoder: str = "policy"
    vjepa2_path: str = ""
    vjepa2_hidden: int = 96
    vjepa2_layers: int = 3
    vjepa2_heads: int = 4
    vjepa2_pred_layers: int = 2
    vjepa2_steps: int = 600
    vjepa2_batch_size: int = 32
    vjepa2_mask_ratio: float = 0.6
    horizon: int = 0  # steps a chunk spans: ẑ_{t+k}; 0 = model.chunk
    hidden: int = 256
    layers: int = 3
    steps: int = 3000
    batch_size: int = 256
    lr: float = 0.001
    rollout_steps: int = 2  # autoregressive steps of the rollout L1 term (1 = teacher forcing only)
    rollout_weight: float = 1.0
    holdout_fraction: float = 0.1  # demos per task kept out of training for the sanity gates
    num_threads: int = 2
    seed: int = 0


@dataclass
class PosttrainSection:
    """Offline GRPO on logged demo states (no simulator): G candidate chunks per state from the policy,
    R = w_sub·r_sub + w_goal·r_goal + w_dev·r_dev, group-normalised advantages, clipped chunk ratio,
    KL to the frozen SFT policy (``atlasva.rl``)."""

    steps: int = 300
    states_per_step: int = 16
    group_size: int = 8
    epochs: int = 2  # optimiser passes over each sampled group batch (the clip acts from the second)
    lr: float = 0.00003
    clip_ratio: float = 0.2
    kl_coef: float = 0.05
    kl_kind: str = "k3"
    w_sub: float = 1.0
    w_goal: float = 1.0
    w_dev: float = 1.0
    #: Gaussian policy of a regression head: N(mean, σ²) per action dimension; σ starts at the SFT
    #: policy's residual std on the demos (times init_std_scale) and is learned unless learn_std=false
    init_std_scale: float = 1.0
    min_std: float = 0.02
    learn_std: bool = True
    #: flow / dit heads: Flow-SDE noise level a of σ_t = a·sqrt(t / (1 − t)) (per-step Gaussian log-probs)
    sde_noise: float = 0.5
    grad_clip: float = 1.0
    log_every: int = 25
    checkpoint_every: int = 100
    num_threads: int = 2
    seed: int = 0


@dataclass
class AtomSection:
    #: Stage I: SFT on "task: … / now: …" with the segmenter's subtask (``atlasva vla segment`` first);
    #: evaluation then takes the current subtask from the progress head
    subtasks: bool = False
    segment: SegmentSection = field(default_factory=SegmentSection)
    progress: ProgressSection = field(default_factory=ProgressSection)
    worldmodel: WorldModelSection = field(default_factory=WorldModelSection)
    posttrain: PosttrainSection = field(default_factory=PosttrainSection)


def conditioned_instruction(task: str, subtask: str) -> str:
    """The Stage-I instruction: the high-level task and the current atomic subtask."""
    return f"task: {task} / now: {subtask}"
