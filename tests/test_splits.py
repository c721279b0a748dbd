"""Held-out numbers stand on held-out levels: splits hashed under the config a run really plays, distinct
evaluation levels, levels.jsonl and the summary's split report, refusal of overlap, one run identity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from atlasva.config import load_config
from atlasva.envs.registry import load_spec, make
from atlasva.runs import RunFolder, run_identity, split_report
from atlasva.train import TrainConfig
from atlasva.train.trainer import COSMETIC_KEYS, SplitOverlapError, plan_levels

CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml") if p.stem != "demo")


def _hash(env, seed: int) -> str:
    return env.reset(seed=seed)[1]["level_hash"]


def test_levels_are_hashed_under_the_run_config_not_the_spec():
    # the demo plays fixed corners (random_start_goal=false) while the spec's env default randomises them:
    # the same seed is another level, so hashing the spec's config would sort levels into the wrong split
    spec = load_spec("frozenlake")
    overrides = {"random_start_goal": False}
    levels = spec.levels("validation", 30, overrides=overrides)
    played = make("frozenlake", **spec.final_config(overrides), obs_mode="text")
    unplayed = make("frozenlake", **spec.config, obs_mode="text")
    assert [_hash(played, s) for s, _ in levels] == [h for _, h in levels]
    assert any(_hash(unplayed, s) != h for s, h in levels)
    assert all(spec.in_split(h, "validation") for _, h in levels)


def test_evaluation_levels_are_distinct_unless_repeats_are_asked_for():
    spec = load_spec("frozenlake")
    overrides = {"random_start_goal": False}
    distinct = spec.levels("validation", 200, overrides=overrides)
    assert len({h for _, h in distinct}) == 200
    repeats = spec.levels("validation", 200, overrides=overrides, distinct=False)
    assert len({h for _, h in repeats}) < 200  # 4×4 lakes with fixed corners repeat often
    with pytest.raises(RuntimeError, match="distinct levels"):
        spec.levels("validation", 50, overrides=overrides, max_tries=60)


# counts capped so the test stays fast (navigation levels take ~50 ms each to generate); what decides the
# split is the config's own env overrides, so configs sharing them (base/memory, PPO/GRPO) are one case
SMALL = ["sft.levels=60", "trainer.steps=2", "trainer.levels_per_step=16", "eval.episodes=40"]


def _level_cases() -> list[tuple[str | None, list[str]]]:
    cases: dict[str, tuple[str | None, list[str]]] = {"demo": (None, [])}  # the embedded demo, full size
    for path in CONFIGS:
        cfg, _ = load_config(TrainConfig, str(path), [])
        key = json.dumps([cfg.env.spec, cfg.env.config, cfg.eval.split], sort_keys=True)
        cases.setdefault(key, (str(path), SMALL))
    return list(cases.values())


def test_all_shipped_envs_are_covered():
    specs = {load_config(TrainConfig, p, [])[0].env.spec for p, _ in _level_cases() if p}
    assert specs == {load_config(TrainConfig, str(p), [])[0].env.spec for p in CONFIGS}
    assert {"frozenlake", "sokoban", "navigation"} <= specs


@pytest.mark.parametrize("path,overrides", _level_cases(), ids=lambda x: Path(x).stem if isinstance(x, str) else None)
def test_every_shipped_config_trains_and_evaluates_on_disjoint_levels(path, overrides):
    cfg, _ = load_config(TrainConfig, path, overrides)
    sft, rl, held_out = plan_levels(cfg)
    assert len(held_out) == cfg.eval.episodes == len({h for _, h in held_out})
    train = {h for _, h in sft + rl}
    assert not train & {h for _, h in held_out}
    # spot-check the recorded hashes against the env built with the run's final config
    spec = load_spec(cfg.env.spec)
    env = make(spec.env, **spec.final_config(cfg.env.config))
    for seed, h in (sft + rl)[::97] + held_out[::23]:
        assert _hash(env, seed) == h


def test_a_run_that_would_evaluate_on_training_levels_refuses_to_start():
    cfg, _ = load_config(TrainConfig, None, ["eval.split=train", "eval.episodes=20", "sft.levels=10",
                                             "trainer.steps=2", "trainer.levels_per_step=4"])
    with pytest.raises(SplitOverlapError, match="validation"):
        plan_levels(cfg)


def test_levels_jsonl_and_split_report(tmp_path):
    run = RunFolder.create("r", {"a": 1}, root=tmp_path)
    run.record_levels("sft", [(1, "aa"), (2, "bb"), (3, "aa")])  # a level twice: listed once
    run.record_levels("eval:sft", [(10, "cc"), (11, "dd")])
    run.record_levels("eval:sft", [(10, "cc")])  # a stage recorded again replaces its lines (resume)
    rows = [json.loads(x) for x in (run.path / "levels.jsonl").read_text().splitlines()]
    assert rows == [{"stage": "sft", "seed": 1, "level_hash": "aa"}, {"stage": "sft", "seed": 2, "level_hash": "bb"},
                    {"stage": "eval:sft", "seed": 10, "level_hash": "cc"}]
    assert run.split_report() == {"train_levels": 2, "eval_levels": 1, "overlap": 0}
    assert split_report(rows + [{"stage": "eval:rl", "seed": 1, "level_hash": "aa"}])["overlap"] == 1
    with pytest.raises(ValueError, match="eval:<STAGE>"):
        run.record_levels("held-out", [])


def test_run_identity_ignores_run_and_cosmetic_keys(tmp_path):
    cfg = {"trainer": {"steps": 3, "wandb": False, "save_every": 5}, "run": {"root": "x", "resume": True}}
    same = {"trainer": {"steps": 3, "wandb": True, "save_every": 1}, "run": {"root": "y", "resume": False}}
    assert run_identity(cfg, COSMETIC_KEYS) == run_identity(same, COSMETIC_KEYS) == {"trainer": {"steps": 3}}
    first = RunFolder.create("t", cfg, root=tmp_path, exclude=COSMETIC_KEYS)
    (first.path / "marker").write_text("old")
    again = RunFolder.create("t", same, root=tmp_path, resume=False, exclude=COSMETIC_KEYS)
    assert again.path == first.path and not (again.path / "marker").exists()  # the same folder, afresh
    other = RunFolder.create("t", {**cfg, "trainer": {"steps": 4}}, root=tmp_path, exclude=COSMETIC_KEYS)
    assert other.path != first.path
