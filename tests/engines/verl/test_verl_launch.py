"""`atlasva train CONFIG engine=verl` up to verl's start: the recipes compose into verl 0.9.1's own config and
pass its validation; the split manifests feed verl's data loader through the atlasva dataset; no level is in
both splits; the rows start episodes."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf
from verl.trainer.ppo.utils import create_rl_dataset, need_critic, need_reference_policy
from verl.utils.config import validate_config
from verl.utils.dataset.rl_dataset import collate_fn

from atlasva.cli import main
from atlasva.config import load_config
from atlasva.train import TrainConfig


def prepared(tmp_path, tiny_policy_dir, recipe: str, *extra: str):
    from atlasva.integrations.verl.launch import prepare

    cfg, name = load_config(TrainConfig, recipe, [f"policy.model.path={tiny_policy_dir}", f"run.root={tmp_path}",
                                                  "trainer.steps=3", "eval.episodes=16", *extra])
    cfg.validate()
    run_dir, config_path = prepare(cfg, name)
    return cfg, run_dir, OmegaConf.load(str(config_path))


@pytest.mark.parametrize("recipe,gpus", [("sokoban-verl-1gpu", 1), ("sokoban-verl-8gpu", 8)])
def test_recipes_compose_into_a_valid_verl_config(tmp_path, tiny_policy_dir, recipe, gpus):
    cfg, run_dir, config = prepared(tmp_path, tiny_policy_dir, recipe)
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    assert need_critic(config)  # bi-level GAE trains verl's critic
    assert config.trainer.n_gpus_per_node == gpus and config.trainer.v1.trainer_mode == "atlasva"
    assert config.actor_rollout_ref.rollout.agent.default_agent_loop == "atlasva"
    assert config.data.train_batch_size == cfg.trainer.levels_per_step
    assert config.data.max_prompt_length + config.data.max_response_length == cfg.rollout.max_context_tokens
    assert config.atlasva.algorithm.estimator == "bi_level_gae" and config.atlasva.memory_dir
    assert config.ray_kwargs.ray_init.runtime_env.worker_process_setup_hook.endswith("register_in_worker")


def test_dataset_rows_have_disjoint_splits(tmp_path, tiny_policy_dir):
    cfg, run_dir, config = prepared(tmp_path, tiny_policy_dir, "sokoban-verl-1gpu")
    train = create_rl_dataset(config.data.train_files, config.data, None, None, is_train=True)
    val = create_rl_dataset(config.data.val_files, config.data, None, None, is_train=False)
    assert len(train) == 3 * cfg.trainer.levels_per_step and len(val) == 16
    rows = {name: [ds[i] for i in range(len(ds))] for name, ds in (("train", train), ("validation", val))}
    for split, rs in rows.items():
        assert {r["split"] for r in rs} == {split}
        assert len({r["level_hash"] for r in rs}) == len(rs)  # distinct levels
    assert not {r["level_hash"] for r in rows["train"]} & {r["level_hash"] for r in rows["validation"]}
    assert not {r["seed"] for r in rows["train"]} & {r["seed"] for r in rows["validation"]}
    # the hashes are those of the levels the agent loop will play (the run's final env config)
    from atlasva.envs.registry import make

    r = rows["validation"][0]
    env = make(r["env"], **{**json.loads(r["env_config"]), "obs_mode": "text"})
    assert env.reset(seed=r["seed"])[1]["level_hash"] == r["level_hash"]
    batch = collate_fn(rows["train"][:4])  # verl's own collate: what its trainer hands the agent loop
    assert list(batch["agent_name"]) == ["atlasva"] * 4 and len(batch["raw_prompt"]) == 4
    splits = json.loads((run_dir / "summary.json").read_text())["splits"]
    assert splits == {"train_levels": len(train), "eval_levels": len(val), "overlap": 0}  # levels.jsonl agrees


def test_cli_dry_run_and_clear_errors(tmp_path, tiny_policy_dir, capsys):
    assert main(["train", "sokoban-verl-1gpu", f"policy.model.path={tiny_policy_dir}", f"run.root={tmp_path}",
                 "env.spec=frozenlake", "env.config.random_start_goal=true", "trainer.steps=2", "eval.episodes=8",
                 "verl.dry_run=true"]) == 0
    assert "atlasva.integrations.verl.launch" in capsys.readouterr().out
    assert main(["train", "sokoban-verl-1gpu", "policy.model.path=/nowhere", f"run.root={tmp_path}",
                 "verl.dry_run=true"]) == 2
    assert "local Hugging Face model folder" in capsys.readouterr().err


def test_gpu_check_builds_the_3b_geometry_and_a_valid_run(tmp_path):
    """benchmarks/verl_gpu_check.py up to verl's start, on the CPU: the 3B geometry's parameter count (meta
    device, no memory) and the whole path at the tiny geometry (model folder, splits, verl config validated)."""
    import importlib.util
    from pathlib import Path

    from atlasva.policy.tokenizer import build_tokenizer

    path = Path(__file__).parents[3] / "benchmarks" / "verl_gpu_check.py"
    spec = importlib.util.spec_from_file_location("verl_gpu_check", path)
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    n = check.count_parameters(check.model_config(check.QWEN25_VL_3B, build_tokenizer(1024)))
    assert 3.7e9 < n < 3.8e9  # Qwen2.5-VL-3B-Instruct: 3.75 B
    assert check.main(["--dry-run", "--geometry", "tiny", "--out", str(tmp_path)]) == 0
    config = OmegaConf.load(str(next((tmp_path / "runs").glob("*/verl_config.yaml"))))
    assert config.trainer.total_training_steps == 3 and "file" in config.trainer.logger
    assert config.ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH.endswith("verl-metrics.jsonl")
