"""The ``verl`` section of a training config (``engine=verl``). Importable without verl."""

from __future__ import annotations

from dataclasses import dataclass, field

ENGINES = ("atlasva", "verl")
LAYOUTS = ("concat", "per_turn")
ROLLOUT_ENGINES = ("vllm", "sglang")


@dataclass
class VerlSection:
    """How verl runs an atlasva config. Batch sizes, steps, learning rate, estimator, γs, KL, rollout limits
    and memory come from the rest of the config (``trainer``, ``algorithm``, ``rollout``, ``memory``)."""

    n_gpus_per_node: int = 1
    nnodes: int = 1
    rollout_engine: str = "vllm"  # vllm | sglang (verl's agent-loop servers)
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.5  # of each rollout GPU, for the engine's weights + KV cache
    ppo_mini_batch_size: int = 0  # prompts (levels) per optimiser step; 0 = trainer.levels_per_step
    micro_batch_size_per_gpu: int = 2
    max_prompt_length: int = 1024  # the first turn's prompt (system + first observation)
    critic_lr: float = 1e-5  # critic estimators (gae, bi_level_gae, turn_gae) train verl's critic model
    gradient_checkpointing: bool = True
    param_offload: bool = False  # FSDP offload of parameters / optimiser state to the CPU
    optimizer_offload: bool = False
    agent_workers: int = 8  # verl AgentLoopWorker actors (each runs many episodes concurrently)
    test_freq: int = 10  # validation on held-out levels every N steps (0 = off)
    save_freq: int = 50
    val_before_train: bool = True
    logger: list[str] = field(default_factory=lambda: ["console"])
    #: "" = envs live in the rollout workers; else the URL of an `atlasva serve` env service
    env_server_url: str = ""
    #: raw verl overrides applied last, e.g. ["actor_rollout_ref.rollout.enforce_eager=true"]
    overrides: list[str] = field(default_factory=list)
    #: write verl's config and print the command instead of starting verl
    dry_run: bool = False

    def __post_init__(self) -> None:
        if self.rollout_engine not in ROLLOUT_ENGINES:
            raise ValueError(f"verl.rollout_engine={self.rollout_engine!r}; accepted: {', '.join(ROLLOUT_ENGINES)}")
        if self.n_gpus_per_node < 1 or self.nnodes < 1:
            raise ValueError("verl.n_gpus_per_node and verl.nnodes must be >= 1")
        if self.n_gpus_per_node % self.tensor_parallel_size:
            raise ValueError(f"verl.tensor_parallel_size={self.tensor_parallel_size} must divide "
                             f"verl.n_gpus_per_node={self.n_gpus_per_node}")
