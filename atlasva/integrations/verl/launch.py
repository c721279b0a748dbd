"""``atlasva train CONFIG engine=verl``: verl's config written from ours, then verl started.

The run folder is atlasva's (``runs/<name>-<hash>/``): the resolved atlasva config, the split manifests
(levels drawn with :meth:`EnvSpec.seeds` under the final env config: distinct, train ∩ validation = ∅, checked
again here), ``verl_config.yaml`` (verl 0.9.1's ``ppo_trainer`` defaults composed with the overrides below;
start it by hand with ``python -m atlasva.integrations.verl.launch RUN/verl_config.yaml``), verl's
checkpoints (``verl-checkpoints/``, the memory inside each) and the published memory snapshots.

What maps where (atlasva → verl): ``trainer.levels_per_step`` → ``data.train_batch_size``;
``trainer.group_size`` → ``rollout.n``; ``trainer.steps`` → ``trainer.total_training_steps``;
``trainer.lr`` / ``ppo_epochs`` / ``max_grad_norm`` / ``temperature`` → the actor's optimiser, epochs,
grad clip and rollout temperature; ``algorithm.clip_ratio`` / ``clip_ratio_c`` / ``entropy_coef`` /
``kl_coef`` (k3 = verl's ``low_var_kl``) / ``loss_agg`` / ``value_clip`` → the actor's and critic's losses;
``algorithm.estimator`` and its γs / λ → atlasva's estimator in the ``atlasva`` trainer (verl's critic is on
for gae, bi_level_gae and turn_gae); ``rollout.*`` → the agent loop's limits (``max_context_tokens`` =
verl's prompt + response length); ``rollout.concat`` → one output per episode or per turn; ``memory`` →
the trainer's SkillMemory and the snapshots the workers read; ``eval.episodes`` → the validation levels
(greedy, every ``verl.test_freq`` steps).
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from atlasva.integrations.verl.config import VerlSection
from atlasva.integrations.verl.dataset import write_manifest

SETUP_HOOK = "atlasva.integrations.verl.launch.register_in_worker"
KL_KINDS = {"k1": "kl", "k2": "mse", "k3": "low_var_kl"}


def register_in_worker() -> None:
    """Ray's ``worker_process_setup_hook``: registers the ``atlasva`` agent loop and trainer in every worker."""
    import atlasva.integrations.verl.agent_loop  # noqa: F401  (@register("atlasva"))
    import atlasva.integrations.verl.trainer  # noqa: F401  (@register_trainer("atlasva"))


def _bool(x: bool) -> str:
    return "true" if x else "false"


def _layout(cfg: Any) -> str:
    return "concat" if cfg.rollout.concat else "per_turn"


def lengths(cfg: Any, verl: VerlSection) -> tuple[int, int]:
    """(prompt_length, response_length) for verl: the first prompt and the rest of the context."""
    total = int(cfg.rollout.max_context_tokens)
    if cfg.rollout.concat:
        prompt = int(verl.max_prompt_length)
        if prompt >= total:
            raise ValueError(f"verl.max_prompt_length={prompt} leaves no room for responses within "
                             f"rollout.max_context_tokens={total}")
        return prompt, total - prompt
    return total - int(cfg.rollout.max_tokens_per_turn), int(cfg.rollout.max_tokens_per_turn)


def verl_overrides(cfg: Any, run_dir: Path, manifests: dict[str, Path], model_path: str) -> list[str]:
    """Hydra overrides of verl's ``ppo_trainer`` config for this atlasva config."""
    from atlasva.train.estimators import get_estimator

    v: VerlSection = cfg.verl
    a, t = cfg.algorithm, cfg.trainer
    critic = get_estimator(a.estimator).critic
    prompt_len, response_len = lengths(cfg, v)
    mini = v.ppo_mini_batch_size or t.levels_per_step
    if a.kl_kind not in KL_KINDS:
        raise ValueError(f"algorithm.kl_kind={a.kl_kind!r} has no verl counterpart; use one of {', '.join(KL_KINDS)}")
    o = [
        f"data.train_files=[{manifests['train']}]",
        f"data.val_files=[{manifests['validation']}]",
        "data.custom_cls.path=pkg://atlasva.integrations.verl.dataset",
        "data.custom_cls.name=AtlasvaEnvDataset",
        f"data.train_batch_size={t.levels_per_step}",
        f"data.max_prompt_length={prompt_len}",
        f"data.max_response_length={response_len}",
        "data.dataloader_num_workers=0",  # rows are tiny: no loader processes
        f"data.seed={t.seed}",
        f"actor_rollout_ref.model.path={model_path}",
        f"actor_rollout_ref.model.enable_gradient_checkpointing={_bool(v.gradient_checkpointing)}",
        "actor_rollout_ref.model.use_remove_padding=true",
        f"actor_rollout_ref.actor.optim.lr={t.lr}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={mini}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={v.micro_batch_size_per_gpu}",
        f"actor_rollout_ref.actor.ppo_epochs={t.ppo_epochs}",
        f"actor_rollout_ref.actor.grad_clip={t.max_grad_norm}",
        f"actor_rollout_ref.actor.clip_ratio={a.clip_ratio}",
        f"actor_rollout_ref.actor.entropy_coeff={a.entropy_coef}",
        f"actor_rollout_ref.actor.use_kl_loss={_bool(a.kl_coef > 0)}",
        f"actor_rollout_ref.actor.kl_loss_coef={a.kl_coef}",
        f"actor_rollout_ref.actor.kl_loss_type={KL_KINDS[a.kl_kind]}",
        f"actor_rollout_ref.actor.loss_agg_mode={a.loss_agg}",
        f"actor_rollout_ref.actor.fsdp_config.param_offload={_bool(v.param_offload)}",
        f"actor_rollout_ref.actor.fsdp_config.optimizer_offload={_bool(v.optimizer_offload)}",
        f"actor_rollout_ref.ref.fsdp_config.param_offload={_bool(v.param_offload)}",
        f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={v.micro_batch_size_per_gpu}",
        f"actor_rollout_ref.rollout.name={v.rollout_engine}",
        f"actor_rollout_ref.rollout.tensor_model_parallel_size={v.tensor_parallel_size}",
        f"actor_rollout_ref.rollout.gpu_memory_utilization={v.gpu_memory_utilization}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={v.micro_batch_size_per_gpu}",
        f"actor_rollout_ref.rollout.n={t.group_size}",
        f"actor_rollout_ref.rollout.temperature={t.temperature}",
        "actor_rollout_ref.rollout.calculate_log_probs=true",
        "actor_rollout_ref.rollout.multi_turn.enable=true",
        "actor_rollout_ref.rollout.agent.default_agent_loop=atlasva",
        f"actor_rollout_ref.rollout.agent.num_workers={v.agent_workers}",
        "actor_rollout_ref.rollout.val_kwargs.temperature=0",  # held-out levels greedily, as atlasva evaluates
        "actor_rollout_ref.rollout.val_kwargs.do_sample=false",
        f"critic.enable={_bool(critic)}",
        f"algorithm.adv_estimator={'gae' if critic else 'grpo'}",  # verl's own branches; atlasva's estimator runs
        f"algorithm.gamma={a.gamma_token}",
        f"algorithm.lam={a.lam}",
        f"algorithm.norm_adv_by_std_in_grpo={_bool(a.norm_by_std)}",
        "algorithm.use_kl_in_reward=false",
        "reward.reward_model.enable=false",
        "trainer.v1.trainer_mode=atlasva",
        f"trainer.n_gpus_per_node={v.n_gpus_per_node}",
        f"trainer.nnodes={v.nnodes}",
        f"trainer.total_training_steps={t.steps}",
        "trainer.total_epochs=1000",  # the step count decides
        f"trainer.test_freq={v.test_freq}",
        f"trainer.save_freq={v.save_freq}",
        f"trainer.val_before_train={_bool(v.val_before_train)}",
        f"trainer.logger={json.dumps(list(v.logger))}",
        "trainer.project_name=atlasva",
        f"trainer.experiment_name={run_dir.name}",
        f"trainer.default_local_dir={run_dir / 'verl-checkpoints'}",
        "trainer.resume_mode=auto",
    ]
    if a.clip_ratio_c > 1:
        o.append(f"actor_rollout_ref.actor.clip_ratio_c={a.clip_ratio_c}")
    if critic:
        o += [f"critic.model.path={model_path}", f"critic.optim.lr={v.critic_lr}",
              f"critic.ppo_micro_batch_size_per_gpu={v.micro_batch_size_per_gpu}",
              f"critic.cliprange_value={a.value_clip}",
              f"critic.model.enable_gradient_checkpointing={_bool(v.gradient_checkpointing)}",
              f"critic.fsdp.param_offload={_bool(v.param_offload)}",
              f"critic.fsdp.optimizer_offload={_bool(v.optimizer_offload)}"]
    return [*o, *v.overrides]


def atlasva_section(cfg: Any, run_dir: Path, model_path: str) -> dict[str, Any]:
    """The ``atlasva`` section of verl's config: what the agent loop and the trainer read."""
    memory_dir = str(run_dir / "memory-snapshots") if cfg.memory.enable else ""
    return {
        "run_dir": str(run_dir),
        "model_path": model_path,
        "layout": _layout(cfg),
        "rollout": dataclasses.asdict(cfg.rollout),
        "gamma_turn": cfg.shaping_gamma(),  # the estimator's discount between turns: shaping telescopes
        "memory_dir": memory_dir,
        "memory": dataclasses.asdict(cfg.memory),
        "algorithm": dataclasses.asdict(cfg.algorithm),
        "env_server_url": cfg.verl.env_server_url,
    }


def compose_verl_config(overrides: list[str], section: dict[str, Any]) -> Any:
    """verl's own ``ppo_trainer`` defaults with ``overrides``, plus the ``atlasva`` section and the Ray hook."""
    import verl
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    config_dir = Path(verl.__file__).parent / "trainer" / "config"
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        config = compose(config_name="ppo_trainer", overrides=overrides)
    with open_dict(config):
        config.atlasva = OmegaConf.create(section)
        runtime_env = config.ray_kwargs.ray_init.setdefault("runtime_env", {})
        runtime_env["worker_process_setup_hook"] = SETUP_HOOK
    return config


def draw_splits(cfg: Any) -> tuple[str, dict[str, Any], dict[str, list[tuple[int, str]]]]:
    """(env name, final env config, {split: [(seed, level hash)]}): the levels under the run's final env
    config, distinct, from the spec's disjoint splits."""
    from atlasva.envs.registry import load_spec

    spec = load_spec(cfg.env.spec)
    counts = {"train": cfg.trainer.steps * cfg.trainer.levels_per_step, cfg.eval.split: cfg.eval.episodes}
    levels = {split: spec.levels(split, n, overrides=cfg.env.config, distinct=split == "train" or cfg.eval.distinct_levels)
              for split, n in counts.items()}
    return spec.env, spec.final_config(cfg.env.config), levels


def prepare(cfg: Any, name: str) -> tuple[Path, Path]:
    """Write the run folder, split manifests and ``verl_config.yaml``; returns (run dir, config path)."""
    from omegaconf import OmegaConf

    from atlasva.config import to_dict
    from atlasva.runs import RunFolder

    model_path = cfg.policy.model.path
    if not model_path or not (Path(model_path).expanduser() / "config.json").is_file():
        raise ValueError(f"engine=verl needs policy.model.path = a local Hugging Face model folder "
                         f"(e.g. Qwen2.5-VL-3B-Instruct); got {model_path!r}")
    model_path = str(Path(model_path).expanduser().resolve())
    run = RunFolder.create(name, to_dict(cfg), root=cfg.run.root, resume=cfg.run.resume)
    env, env_config, levels = draw_splits(cfg)
    train, held = levels["train"], levels[cfg.eval.split]
    run.record_levels("rl", train)
    run.record_levels("eval:rl", held)
    splits = run.split_report()
    if splits["overlap"]:
        raise ValueError(f"{splits['overlap']} level(s) are in both the training and the held-out split; "
                         "check the env spec's split ranges")
    manifests = {}
    for split, pairs in (("train", train), ("validation", held)):
        manifests[split] = write_manifest(run.path / "verl" / f"{split}.json", env=env, env_config=env_config,
                                          split=split, seeds=[s for s, _ in pairs], level_hashes=[h for _, h in pairs])
    config = compose_verl_config(verl_overrides(cfg, run.path, manifests, model_path),
                                 atlasva_section(cfg, run.path, model_path))
    path = run.path / "verl_config.yaml"
    tmp = path.with_name(".verl_config.yaml.tmp")
    tmp.write_text(OmegaConf.to_yaml(config))
    tmp.replace(path)
    run.write_summary({}, wall_time_s=0.0, env=env, engine="verl", splits=splits)
    run.close()
    return run.path, path


def start(config_path: str | Path) -> None:
    """Run verl's v1 PPO trainer on a written ``verl_config.yaml`` (needs GPUs, Ray and the verl extra)."""
    from omegaconf import OmegaConf
    from verl.trainer.main_ppo import TaskRunnerV1, run_ppo
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    register_in_worker()  # this process too (config validation, local runs)
    config = OmegaConf.load(str(config_path))
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    run_ppo(config, task_runner_class=TaskRunnerV1)


def train_with_verl(cfg: Any, name: str) -> dict[str, Any]:
    run_dir, config_path = prepare(cfg, name)
    command = f"{shlex.quote(sys.executable)} -m atlasva.integrations.verl.launch {shlex.quote(str(config_path))}"
    print(f"verl config: {config_path}\nstart it with: {command}")
    if cfg.verl.dry_run:
        return {"run_dir": str(run_dir), "verl_config": str(config_path), "command": command}
    start(config_path)
    return {"run_dir": str(run_dir), "verl_config": str(config_path), "command": command, "started": True}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m atlasva.integrations.verl.launch RUN/verl_config.yaml", file=sys.stderr)
        return 2
    start(args[0])
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

