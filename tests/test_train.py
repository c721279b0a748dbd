"""The trainer end to end on the tiny model: run folder, checkpoints, exact resume after kill -9,
the inspector, NaN guards, config errors, evaluation of a saved checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from atlasva.cli import main
from atlasva.config import ConfigError, load_config
from atlasva.train import TrainConfig

TINY = [
    "algorithm.estimator=bi_level_gae",  # these tests exercise the critic path (the demo default is grpo)
    "env.config.format=no_think",
    "rollout.max_turns=2",
    "rollout.max_tokens_per_turn=8",
    "trainer.levels_per_step=2",
    "trainer.group_size=2",
    "trainer.minibatch_size=4",
    "trainer.ppo_epochs=1",
    "policy.model.cpu_threads=1",
]


def _args(tmp_path, tiny_policy_dir, *extra):
    return [*TINY, f"policy.model.path={tiny_policy_dir}", f"run.root={tmp_path / 'runs'}", *extra]


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="trainer.steps"):
        load_config(TrainConfig, None, ["trainer.step=3"])
    cfg, _ = load_config(TrainConfig, None, ["algorithm.estimator=grpo", "trainer.group_size=1"])
    with pytest.raises(ValueError, match="group_size"):
        cfg.validate()
    cfg, _ = load_config(TrainConfig, None, ["algorithm.estimator=turn_gae"])
    with pytest.raises(ValueError, match="concat"):
        cfg.validate()
    cfg, _ = load_config(TrainConfig, None, ["algorithm.estimator=ppo2"])
    with pytest.raises(ValueError, match="bi_level_gae"):
        cfg.validate()
    cfg, _ = load_config(TrainConfig, None, ["policy.sampling.top_p=0.9"])
    with pytest.raises(ValueError, match="top_p=1.0"):  # behaviour log-probs would not match the sampler
        cfg.validate()


def test_the_demo_default_is_the_frozenlake_memory_grpo_config():
    """README: `atlasva train` with no config runs configs/frozenlake-memory-grpo.yaml's values (one run identity)."""
    from atlasva.config import to_dict
    from atlasva.runs import run_identity
    from atlasva.train.trainer import COSMETIC_KEYS

    embedded, _ = load_config(TrainConfig, None, [])
    twin, _ = load_config(TrainConfig, "frozenlake-memory-grpo", [])
    assert run_identity(to_dict(embedded), COSMETIC_KEYS) == run_identity(to_dict(twin), COSMETIC_KEYS)
    # the demo's reward has no per-turn bonus to farm, and its shaping telescopes under its estimator
    assert embedded.env.config["format_reward"] == 0.0 and embedded.shaping_gamma() == 1.0
    # the other memory configs keep learning their atlases (the demo's heuristics-only default is not inherited)
    for name in ("sokoban-memory", "navigation-memory-grpo", "frozenlake-memory"):
        assert load_config(TrainConfig, name, [])[0].memory.learn_atlases, name


def test_train_writes_run_folder_inspector_and_hf_policy(tmp_path, tiny_policy_dir, capsys):
    args = _args(tmp_path, tiny_policy_dir, "trainer.steps=2", "trainer.inspect_every=1", "sft.levels=6",
                 "sft.epochs=1", "eval.episodes=4", "eval.batch_size=4")
    assert main(["train", *args]) == 0
    (run,) = list((tmp_path / "runs").iterdir())
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["eval"]) == {"untrained", "sft", "rl"} and summary["rl_steps"] == 2
    for stage in summary["eval"].values():
        assert stage["episodes"] == 4 == stage["distinct_levels"] and len(stage["success_ci95"]) == 2
    # every level the run touched is listed, and the held-out ones were never trained on
    assert summary["splits"] == {"train_levels": 6 + 2 * 2, "eval_levels": 4, "overlap": 0}
    levels = [json.loads(x) for x in (run / "levels.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in levels} == {"sft", "rl", "eval:untrained", "eval:sft", "eval:rl"}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["rl/skipped_minibatches"] == 0 for r in rows) and "rl/value_loss" in rows[0]
    for name in ("config.yaml", "provenance.json", "curves.png", "memory.png", "episodes-rl.jsonl"):
        assert (run / name).exists(), name
    assert list((run / "tb").iterdir())
    # the trained policy is a plain Hugging Face folder the same code path loads
    from atlasva.policy import Policy, PolicyConfig

    pcfg = PolicyConfig()
    pcfg.model.path = str(run / "policy")
    assert Policy.from_config(pcfg).generate(
        [[{"role": "user", "content": "hi"}]], sampling=pcfg.sampling.__class__(max_new_tokens=3))
    # the inspector renders the dumped episodes
    capsys.readouterr()
    assert main(["inspect", str(run), "--episode", "1", "--no-color"]) == 0
    out = capsys.readouterr().out
    assert "turn end" in out and "⏎[turn 0:" in out
    html = (run / "inspect" / "step-000002-episode-1.html").read_text()
    assert "data:image/png;base64" in html and "adv" in html
    assert main(["inspect", str(run), "--step", "7"]) == 2
    assert "available: [1, 2]" in capsys.readouterr().err
    # evaluating the saved checkpoint writes its own run folder with the same summary schema
    assert main(["eval", f"--checkpoint={run / 'policy'}", "episodes=3", "env.config.format=no_think",
                 "rollout.max_turns=2", "rollout.max_tokens_per_turn=8", f"run.root={tmp_path / 'evals'}"]) == 0
    (ev,) = list((tmp_path / "evals").iterdir())
    assert json.loads((ev / "summary.json").read_text())["eval"]["eval"]["episodes"] == 3


def _run_train(args, env):
    return subprocess.Popen([sys.executable, "-m", "atlasva.cli", "train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_kill_9_then_same_command_resumes_exactly(tmp_path, tiny_policy_dir):
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    common = ["trainer.steps=4", "trainer.save_every=1", "sft.enable=false", "eval.stages=[]"]
    ref_args = _args(tmp_path / "ref", tiny_policy_dir, *common)
    ref = _run_train(ref_args, env)
    assert ref.wait(timeout=600) == 0, ref.stdout.read()
    (ref_run,) = list((tmp_path / "ref" / "runs").iterdir())
    ref_rows = [json.loads(x) for x in (ref_run / "metrics.jsonl").read_text().splitlines()]

    args = _args(tmp_path / "killed", tiny_policy_dir, *common)
    proc = _run_train(args, env)
    ckpt_dir = None
    deadline = time.time() + 600
    while time.time() < deadline:  # kill -9 once RL step 2 is checkpointed
        runs = list((tmp_path / "killed" / "runs").glob("*/checkpoints/step-0200000[2-3]"))
        if runs:
            ckpt_dir = runs[0]
            break
        time.sleep(0.05)
    assert ckpt_dir is not None, "no checkpoint appeared"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = _run_train(args, env)
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert "resumed from" in out
    (run,) = list((tmp_path / "killed" / "runs").iterdir())
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # nothing lost, nothing repeated
    for a, b in zip(rows, ref_rows):  # and the same numbers as an uninterrupted run
        for key in ("train/success_rate", "train/reward", "rl/pg_loss", "rl/value_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key


def test_nan_loss_skips_the_step_without_touching_weights(tiny_policy_dir):
    import numpy as np

    from atlasva.envs.pool import InProcessEnvPool
    from atlasva.policy import Policy, PolicyConfig
    from atlasva.rollout.loop import AgentLoop, EpisodeRequest, RolloutConfig
    from atlasva.train.config import AlgorithmConfig, TrainerSection
    from atlasva.train.estimators import AdvantageResult
    from atlasva.train.ppo import build_batch, ppo_update

    pcfg = PolicyConfig()
    pcfg.model.path = str(tiny_policy_dir)
    policy = Policy.from_config(pcfg)
    loop = AgentLoop(policy, InProcessEnvPool(), RolloutConfig(max_turns=1, max_tokens_per_turn=6))
    res = loop.run([EpisodeRequest("frozenlake", 0, {"format": "no_think"})], seed=0)
    batch = build_batch(res)
    adv = AdvantageResult(torch.full_like(batch.loss_mask, float("nan")), None, batch.loss_mask)
    before = [p.detach().clone() for p in policy.model.trainable_parameters()]
    opt = torch.optim.AdamW(policy.model.trainable_parameters(), lr=1e-2)
    tc = TrainerSection(ppo_epochs=1, minibatch_size=4, temperature=1.0)
    stats = ppo_update(policy, opt, batch, adv, None, AlgorithmConfig(estimator="grpo"), tc,
                       rng=np.random.default_rng(0))
    assert stats["rl/skipped_minibatches"] == 1
    assert all(torch.equal(a, b) for a, b in zip(before, policy.model.trainable_parameters()))
