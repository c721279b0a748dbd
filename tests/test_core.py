"""Registry, env specs and splits, the in-process pool, config, run folder, Episode record, CLI."""

import json
import subprocess
import sys
from dataclasses import dataclass, field

import numpy as np
import pytest

from atlasva import envs, formats
from atlasva.cli import main
from atlasva.config import ConfigError, load_config
from atlasva.envs.pool import InProcessEnvPool
from atlasva.envs.registry import EnvSpec, load_spec
from atlasva.rollout.episode import Episode, Turn
from atlasva.runs import RunFolder, summarize_episodes, wilson_ci


def test_unknown_env_lists_names():
    with pytest.raises(ValueError, match="frozenlake") as exc:
        envs.make("frozenlak")
    assert "Did you mean 'frozenlake'" in str(exc.value)
    with pytest.raises(ValueError, match="size"):
        envs.make("frozenlake", siz=4)


def test_registered_names_work_without_config():
    for name in ("sokoban", "frozenlake"):
        env = envs.make(name)
        obs, info = env.reset(seed=0)
        assert isinstance(obs["text"], str) and obs["text"].count("<image>") == len(obs["images"])


def test_splits_disjoint_by_seed_and_level_hash():
    spec = load_spec("frozenlake")
    train, val = spec.seeds("train", 300), spec.seeds("validation", 100)
    assert not set(train) & set(val)
    env = spec.make(obs_mode="text")

    def hashes(seeds):
        return {env.reset(seed=s)[1]["level_hash"] for s in seeds}

    assert not hashes(train) & hashes(val)
    assert spec.seeds("validation", 100) == val  # deterministic


def test_spec_validation():
    with pytest.raises(ValueError, match="overlap"):
        EnvSpec(env="frozenlake", splits={"train": [0, 10], "validation": [5, 20]})
    with pytest.raises(ValueError, match="Accepted"):
        load_spec("no-such-env")


def test_in_process_pool_contract():
    pool = InProcessEnvPool()
    cfgs = [{"env": "frozenlake"}, {"env": "frozenlake", "size": 5}]
    out = pool.reset([1, 2], cfgs)
    assert len(out) == 2 and out[1][1]["state"]["shape"] == [5, 5]
    plans = [env.solve() for env in pool.envs]
    res = pool.step([formats.answer(plans[0], "free_think"), None])
    assert res[1] is None and res[0][2] is True  # slot 0 terminates, slot 1 skipped
    with pytest.raises(ValueError, match="finished"):
        pool.step(["<answer>Up</answer>", None])
    assert pool.step([None, None]) == [None, None]
    with pytest.raises(ValueError, match="configs"):
        pool.reset([1], cfgs)
    with pytest.raises(ValueError, match="'env'"):
        pool.reset([1], [{"size": 4}])
    pool.close()


def test_info_is_json_native_for_both_envs():
    for name in ("sokoban", "frozenlake"):
        env = envs.make(name)
        _, info = env.reset(seed=3)
        json.dumps(info)
        _, _, _, _, info = env.step("<think>x</think><answer>Up, Left</answer>")
        assert json.loads(json.dumps(info)) == info
        assert set(info["reward_components"]) == {"env", "format", "world_model"}
        assert set(info["metrics"]) == {"format_valid", "action_valid", "action_effective", "success"}


@dataclass
class _Inner:
    steps: int = 10


@dataclass
class _Cfg:
    trainer: _Inner = field(default_factory=_Inner)
    env: dict = field(default_factory=dict)


def test_config_overrides_and_errors(tmp_path):
    cfg, name = load_config(_Cfg, None, ["trainer.steps=50", "env.size=8"])
    assert cfg.trainer.steps == 50 and cfg.env == {"size": 8} and name == "default"
    with pytest.raises(ConfigError, match="did you mean 'trainer.steps'"):
        load_config(_Cfg, None, ["trainer.step=3"])
    with pytest.raises(ConfigError, match="trainer.steps"):
        load_config(_Cfg, None, ["trainer.steps=many"])
    path = tmp_path / "x.yaml"
    path.write_text("trainer:\n  stepz: 3\n")
    with pytest.raises(ConfigError, match="stepz"):
        load_config(_Cfg, str(path))
    with pytest.raises(ConfigError, match="Available"):
        load_config(_Cfg, "no-such-config")


def test_wilson_ci_hand_values():
    lo, hi = wilson_ci(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert wilson_ci(0, 0) == [0.0, 1.0]


def test_run_folder_resume_summary_and_atomic_checkpoints(tmp_path):
    cfg = {"a": 1}
    run = RunFolder.create("demo", cfg, root=tmp_path)
    assert RunFolder.create("demo", cfg, root=tmp_path).path == run.path  # same config -> same folder
    assert RunFolder.create("demo", {"a": 2}, root=tmp_path).path != run.path
    run.log_metrics(1, {"loss": 0.5})
    run.log_metrics(2, {"loss": 0.25})
    with open(run.path / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 3, "lo')  # a line cut by a kill
    assert [r["step"] for r in run.read_metrics()] == [1, 2]
    run.truncate_metrics(1)
    assert [r["step"] for r in run.read_metrics()] == [1]
    for step in (1, 2, 3):
        run.save_checkpoint(step, {"w": np.arange(4, dtype=np.float32) * step}, {"rng": [1, 2]}, keep=2)
    assert [p.name for p in run.checkpoints()] == ["step-00000002", "step-00000003"]
    tensors, state = run.load_checkpoint()
    assert state["step"] == 3 and tensors["w"].tolist() == [0, 3, 6, 9]
    assert not list(run.checkpoint_dir.glob(".tmp*"))
    recs = [{"success": True, "turns": 2, "format_valid_rate": 1.0}, {"success": False, "turns": 5, "format_valid_rate": 0.5}]
    summary = run.write_summary({"solver": summarize_episodes(recs)})
    saved = json.loads((run.path / "summary.json").read_text())
    assert saved["eval"]["solver"]["success_rate"] == 0.5 and saved["eval"]["solver"]["mean_turns"] == 3.5
    assert "wall_time_s" in summary and (run.path / "config.yaml").exists() and (run.path / "provenance.json").exists()
    with pytest.raises(ValueError, match="lacks"):
        run.write_summary({"x": {"episodes": 1}})
    assert RunFolder.create("demo", cfg, root=tmp_path, resume=False).checkpoints() == []


def test_episode_roundtrip():
    ep = Episode(env_name="frozenlake", seed=1, level_hash="ab", start_cell=[0, 0], group_id="g")
    ep.turns.append(Turn(prompt_text="p", response_text="r", actions=["Down"], cells=[[0, 0], [1, 0]],
                         rewards={"env": 0.0, "format": 0.02, "world_model": 0.0, "shaping": 0.01},
                         metrics={"format_valid": True}, frames=[np.zeros((2, 2, 3), np.uint8)]))
    ep.finish("failure", "hole")
    d = json.loads(json.dumps(ep.to_dict()))
    assert d["turns"][0]["n_frames"] == 1  # frames stay out of the JSON form (PNGs / re-render)
    back = Episode.from_dict(d)
    d["turns"][0]["n_frames"] = 0
    assert back.to_dict() == d and back.cells() == [[0, 0], [1, 0]] and back.total_reward == pytest.approx(0.03)
    with pytest.raises(ValueError, match="accepted"):
        ep.finish("won")


def test_cli_envs_list_show_play(tmp_path, capsys):
    assert main(["envs", "list"]) == 0
    assert "sokoban" in capsys.readouterr().out
    out = tmp_path / "lvl.png"
    assert main(["envs", "show", "frozenlake", "--seed", "3", "--out", str(out)]) == 0
    from PIL import Image

    assert Image.open(out).size == (112, 112)
    assert main(["envs", "show", "nosuch"]) == 2
    res = subprocess.run([sys.executable, "-m", "atlasva.cli", "envs", "play", "frozenlake", "--seed", "3"],
                         input="hint\nUp, Jump\n<answer>Down</answer>\nquit\n", capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "optimal:" in res.stdout and "parsed actions: ['Up']" in res.stdout and "action_valid': False" in res.stdout


def test_cli_baselines_writes_run_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    from atlasva.envs.registry import config_dir  # noqa: F401  (configs beside the package are found)

    rc = main(["baselines", "demo", "episodes=6", "sheet_levels=4", f"run.root={tmp_path / 'runs'}"])
    assert rc == 0
    (run,) = list((tmp_path / "runs").iterdir())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["eval"]["solver"]["success_rate"] == 1.0
    assert set(summary["eval"]["solver"]["per_env"]) == {"sokoban", "frozenlake"}
    assert summary["eval"]["random"]["episodes"] == 12
    assert (run / "levels.png").exists() and (run / "episodes-solver.jsonl").exists()
    # the baselines ran through the agent loop: the loop's finish reasons, distinct held-out levels
    assert summary["eval"]["solver"]["finish_reasons"] == {"success": 12}
    assert set(summary["eval"]["random"]["finish_reasons"]) <= {"success", "max_turns", "hole", "deadlock",
                                                                 "env_truncated", "truncated", "failure"}
    assert summary["eval"]["solver"]["distinct_levels"] == 12
    assert summary["splits"] == {"train_levels": 0, "eval_levels": 12, "overlap": 0}
    stages = {json.loads(x)["stage"] for x in (run / "levels.jsonl").read_text().splitlines()}
    assert stages == {"eval:solver", "eval:random"}
    assert main(["baselines", "demo", "episods=3"]) == 2
    assert "did you mean 'episodes'" in capsys.readouterr().err


def test_cli_errors_are_one_line_unless_debug(capsys, monkeypatch):
    monkeypatch.delenv("ATLASVA_DEBUG", raising=False)
    assert main(["baselines", "demo", "agents=[oracle]"]) == 2
    err = capsys.readouterr().err
    assert "unknown agent 'oracle'" in err and "--debug" in err and "Traceback" not in err
    with pytest.raises(ValueError, match="unknown agent"):  # the traceback reaches the user
        main(["--debug", "baselines", "demo", "agents=[oracle]"])
    monkeypatch.setenv("ATLASVA_DEBUG", "1")
    with pytest.raises(ValueError, match="unknown agent"):
        main(["baselines", "demo", "agents=[oracle]"])


def test_every_shipped_config_loads_and_validates():
    from pathlib import Path

    from atlasva.eval.baselines import BaselinesConfig
    from atlasva.train import TrainConfig

    root = Path(__file__).resolve().parents[1] / "configs"
    train_configs = [p for p in root.glob("*.yaml") if p.stem != "demo"]
    assert len(train_configs) >= 12
    for path in train_configs:
        cfg, name = load_config(TrainConfig, str(path))
        cfg.validate()
        load_spec(cfg.env.spec)
        assert name == path.stem
    load_config(BaselinesConfig, str(root / "demo.yaml"))
    for path in (root / "envs").glob("*.yaml"):
        load_spec(str(path))
