"""Config schema of ``atlasva vla {collect,train,eval}`` (YAML files in ``configs/vla/``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from atlasva.runs import RunConfig
from atlasva.vla.atom.config import AtomSection
from atlasva.vla.model import Geometry, make_geometry


@dataclass
class ModelSection:
    """``size`` picks a preset (tiny | base | vggt-1b); any field set here replaces the preset's value."""

    size: str = "tiny"
    image_size: int | None = None
    patch_size: int | None = None
    vision: str | None = None
    vision_dim: int | None = None
    vision_depth: int | None = None
    vision_heads: int | None = None
    vision_registers: int | None = None
    vision_pos_grid: int | None = None
    dim: int | None = None
    depth: int | None = None
    heads: int | None = None
    mlp_ratio: float | None = None
    num_register_tokens: int | None = None
    qk_norm: bool | None = None
    rope_freq: float | None = None
    init_values: float | None = None
    text_path: str | None = None
    text_hidden: int | None = None
    text_layers: int | None = None
    text_heads: int | None = None
    text_kv_heads: int | None = None
    text_intermediate: int | None = None
    text_head_dim: int | None = None
    text_vocab_size: int | None = None
    max_text_tokens: int | None = None
    fusion_layers: int | None = None
    decoder_dim: int | None = None
    decoder_layers: int | None = None
    decoder_heads: int | None = None
    chunk: int | None = None
    action_dim: int | None = None
    state_dim: int | None = None
    head: str | None = None  # l1 | mse | huber (one regression head, three losses) | flow | dit
    flow_steps: int | None = None
    dit_layers: int | None = None
    keypoints: int | None = None  # soft-argmax keypoints per view; 0 = none
    keypoint_map: int | None = None
    keypoint_channels: int | None = None
    views: int | None = None  # unset: len(sim.cameras)
    aux_dim: int | None = None  # auxiliary object/goal-position head; 0 = none
    aux_source: str | None = None  # what the auxiliary head reads: decoder | keypoints
    aux_frame: str | None = None  # the auxiliary targets' frame: world | hand (minus the hand position)
    vggt_path: str = ""  # VGGT model.safetensors / model.pt to initialise the aggregator from
    vision_path: str = ""  # a DINOv2-style ViT (safetensors / .pt) for vision='vit'
    freeze_vision: bool = False
    freeze_text: bool = False
    freeze_aggregator: bool = False
    seed: int = 0

    def geometry(self) -> Geometry:
        names = {f.name for f in dataclasses.fields(Geometry)}
        return make_geometry(self.size, **{k: v for k, v in dataclasses.asdict(self).items() if k in names})


def _default_tasks() -> list[str]:
    return ["reach-v3", "drawer-open-v3"]


def _default_instructions() -> dict[str, Any]:
    return {"reach-v3": "reach the red goal", "drawer-open-v3": "open the drawer"}


@dataclass
class SimSection:
    suite: str = "metaworld"
    tasks: list[str] = field(default_factory=_default_tasks)
    instructions: dict[str, Any] = field(default_factory=_default_instructions)
    #: one frame per camera per query; several views meet in the aggregator's global attention
    cameras: list[str] = field(default_factory=lambda: ["corner2"])
    flip_vertical: bool = True  # Meta-World's corner cameras are mounted upside down
    image_size: int = 128
    max_steps: int = 150
    #: share of the level-hash space held out for evaluation (``envs.registry.level_split``): collect records
    #: only train-split levels, eval plays only validation-split ones
    validation_share: float = 0.25


@dataclass
class CollectSection:
    dataset: str = "runs/datasets/metaworld"
    episodes_per_task: int = 50
    #: per-task counts that replace episodes_per_task, e.g. {reach-v3: 300}: reach needs many distinct goals
    episodes_by_task: dict[str, int] = field(default_factory=dict)
    seed_start: int = 0
    action_noise: float = 0.1  # Gaussian noise on the *executed* action; the recorded label stays the expert's
    #: per-task noise that replaces action_noise (Meta-World), e.g. {reach-v3: 0.5}: wider states around the
    #: expert's path without making another task's expert fail
    action_noise_by_task: dict[str, float] = field(default_factory=dict)
    workers: int = 1  # processes recording episodes in parallel (same dataset whatever the number)
    overwrite: bool = False
    max_steps: int = 0  # LIBERO: steps recorded per episode at most; 0 = the suite's step limit
    lerobot_version: str = "v2.1"  # layout written: v2.1 (a parquet per episode) | v3.0 (many episodes per file)


@dataclass
class DataSection:
    """Training data read from a local path: a LeRobot dataset folder (v2.x / v3.0, e.g. a copy of
    ``lerobot/libero_spatial_image``) or LIBERO HDF5 demos (one ``*_demo.hdf5`` or a folder of them)."""

    path: str = ""  # "" = the dataset ``atlasva vla collect`` records (collect.dataset)
    #: columns fed to the model, one per sim.cameras entry in the same order; [] = derived from sim.cameras
    image_keys: list[str] = field(default_factory=list)
    state_key: str = "observation.state"
    action_key: str = "action"


@dataclass
class LiberoSection:
    """LIBERO specifics (sim.suite = libero_spatial | libero_object | libero_goal | libero_10 | libero_90,
    or a LIBERO-PRO suite such as libero_spatial_lan)."""

    #: raw render (OpenGL, upside down) -> the frames the policy sees; also applied to LIBERO HDF5 frames.
    #: rot180 matches LeRobot's libero_*_image datasets and openpi; flip_vertical | none
    image_transform: str = "rot180"


@dataclass
class TrainSection:
    steps: int = 3000
    batch_size: int = 64
    lr: float = 3e-4
    #: learning rate of the keypoint stem and its projection (0 = train.lr); follows the same schedule
    keypoint_lr: float = 0.0
    weight_decay: float = 0.01
    warmup: int = 100
    grad_clip: float = 1.0
    augment_shift: int = 4  # random-shift augmentation (pixels), 0 = off
    normalization: str = "mean_std"  # mean_std | bounds | none
    #: weight of the auxiliary object/goal-position MSE (needs model.aux_dim and a dataset recorded with
    #: observation.environment_state); 0 = off
    aux_weight: float = 0.0
    log_every: int = 50
    checkpoint_every: int = 500
    seed: int = 0
    num_threads: int = 2


@dataclass
class EvalSection:
    stage: str = "sft"
    episodes_per_task: int = 50
    seed_start: int = 100000  # validation-split levels from here upwards (see sim.validation_share)
    execute_steps: int = 4  # receding horizon: actions of each chunk executed before re-querying
    max_steps: int = 0  # episode horizon; 0 = sim.max_steps
    expert_baseline: bool = True
    save_media: bool = True  # contact sheet PNG + GIF of the first episode of each task
    num_threads: int = 2
    checkpoint: str = ""  # a checkpoint folder; "" = the latest of the run named by `source`
    source: str = "train"  # train: the SFT run's checkpoint | posttrain: the AtomVLA post-training run's
    suite: str = ""  # LIBERO: the suite to evaluate ("" = sim.suite), e.g. a LIBERO-PRO suite libero_spatial_swap
    tasks: list[str] = field(default_factory=list)  # LIBERO: task indices or names; [] = sim.tasks ([] = all)
    workers: int = 1  # LIBERO: episodes run in parallel processes (results identical for any number)


@dataclass
class VLAConfig:
    model: ModelSection = field(default_factory=ModelSection)
    sim: SimSection = field(default_factory=SimSection)
    collect: CollectSection = field(default_factory=CollectSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    data: DataSection = field(default_factory=DataSection)
    libero: LiberoSection = field(default_factory=LiberoSection)
    atom: AtomSection = field(default_factory=AtomSection)
    run: RunConfig = field(default_factory=RunConfig)
