"""Manipulation (MuJoCo): contract, primitives, bad actions, stages, solver, determinism."""

import hashlib
import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from atlasva.sim.render import configure_headless

configure_headless()  # before mujoco is first imported: OSMesa when no GL backend was chosen
mujoco = importlib.import_module("mujoco")  # the test extras install it; a missing one fails

from gymnasium.utils.env_checker import check_env  # noqa: E402

from atlasva import envs, formats  # noqa: E402
from atlasva.envs.manipulation import TASKS  # noqa: E402


def _answer(actions, fmt="free_think", **kw):
    return formats.answer(actions, fmt, action_sep="|", **kw)


@pytest.fixture(scope="module")
def env():
    e = envs.make("manipulation", task="stack_three_cubes", obs_mode="both", width=64)
    yield e
    e.close()


def test_check_env():
    e = envs.make("manipulation", obs_mode="both", width=48, render_mode="rgb_array")
    check_env(e, skip_render_check=False)
    e.close()


def test_observation_has_coordinates_and_frame(env):
    obs, info = env.reset(seed=0)
    img = obs["images"][0]
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8 and img.std() > 5
    assert obs["text"].count("<image>") == 1 and "red cube at (" in obs["text"]
    json.dumps(info)
    red = next(o for o in info["state"]["objects"] if o["name"] == "red cube")
    assert abs(red["position"][2] - 0.02) < 0.003  # resting on the table
    assert info["cells"] == [info["state"]["gripper"]["cell"]]


@pytest.mark.parametrize("task", TASKS)
def test_solver_succeeds_with_stage_rewards(task):
    e = envs.make("manipulation", task=task, obs_mode="vision", width=48)
    for seed in (0, 1, 2):
        e.reset(seed=seed)
        plan, total, done, turns = e.solve(), 0.0, False, 0
        while not done:
            chunk, plan = plan[:2], plan[2:]
            assert chunk, "the plan ran out before success"
            _, _, done, _, info = e.step(_answer(chunk))
            total += info["reward_components"]["env"]
            turns += 1
            assert info["metrics"]["action_valid"] and info["metrics"]["action_effective"]
        assert info["metrics"]["success"] and info["state"]["stage"] == info["state"]["num_stages"] == 2
        assert total == pytest.approx(2 * 0.5 + 1.0)  # two stages + success
    e.close()


def test_bad_actions_are_invalid_never_crashes(env):
    env.reset(seed=3)
    bad = ["pick(0.1, 0.1)", "pick(nan, 0, 0.02)", "place(0.9, 0, 0.02)", "fly(0, 0, 0)", "pick(a, b, c)",
           "push(0,0,0.02,0.1,0.1)", "pick(0, 0, -0.5)", "pick(inf, 0, 0)", "", "pick((0,0,0))"]
    for b in bad:
        _, r, term, _, info = env.step("<think>.</think><answer>" + b + "</answer>")
        m = info["metrics"]
        assert not m["action_valid"] and not m["action_effective"] and info["actions"] == [], b
        assert not term
    # a valid action after an invalid one is not executed
    red = next(o for o in env.state()["objects"] if o["name"] == "red cube")["position"]
    _, _, _, _, info = env.step(_answer(["jump(1)", f"pick({red[0]}, {red[1]}, {red[2]})"]))
    assert info["actions"] == [] and env.state()["gripper"]["holding"] is None


def test_primitives_move_objects_cells_and_targets(env):
    _, info = env.reset(seed=5)
    g = next(o for o in info["state"]["objects"] if o["name"] == "green cube")["position"]
    _, _, _, _, info = env.step(_answer([f"pick({g[0]:.3f}, {g[1]:.3f}, {g[2]:.3f})"]))
    assert info["metrics"]["action_effective"] and info["state"]["gripper"]["holding"] == "green cube"
    assert info["action_targets"] == [env._bin(g[0], g[1])]
    assert len(info["cells"]) == 2 and info["cells"][-1] == env._bin(g[0], g[1])
    _, _, _, _, info = env.step(_answer([f"pick({g[0]:.3f}, {g[1]:.3f}, {g[2]:.3f})"]))  # already holding
    assert info["metrics"]["action_valid"] and not info["metrics"]["action_effective"]
    _, _, _, _, info = env.step(_answer(["place(-0.2, -0.2, 0.02)"]))
    green = next(o for o in info["state"]["objects"] if o["name"] == "green cube")["position"]
    assert np.allclose(green, [-0.2, -0.2, 0.02], atol=0.006) and info["state"]["gripper"]["holding"] is None
    _, _, _, _, info = env.step(_answer(["pick(0.0, 0.24, 0.02)"]))  # nothing there: grasp fails
    assert info["state"]["gripper"]["holding"] is None and not info["metrics"]["action_effective"]
    # push the green cube 8 cm to the right
    _, _, _, _, info = env.step(_answer(["push(-0.25, -0.2, 0.01, -0.13, -0.2, 0.01)"]))
    green = next(o for o in info["state"]["objects"] if o["name"] == "green cube")["position"]
    assert info["metrics"]["action_effective"] and green[0] > -0.17 and len(info["action_targets"]) == 2


def test_relations_and_world_model(env):
    env.reset(seed=1)
    rel = env.relations(env.state())
    assert rel and all(r[1] in env.relation_vocabulary.relations for r in rel)
    assert formats.parse_relations(formats.describe(rel), env.relation_vocabulary) == [tuple(r) for r in rel]
    plan = env.solve()
    env.step(_answer(plan[:2]))
    assert ["green cube", "on", "red cube"] in env.relations(env.state())


def test_heuristics_and_level_round_trip():
    e = envs.make("manipulation", task="place_two_cubes", width=48)
    obs, info = e.reset(seed=8)
    h = e.grid_heuristics()
    json.dumps(h)
    assert h["shape"] == [10, 10] and len(h["goals"]) == 2 and h["occupied"]
    for r, c in h["goals"]:
        assert h["goal_distance"][r][c] == 0
    for r, c in h["hazard"]:
        assert h["goal_distance"][r][c] == -1
    obs2, info2 = e.reset(options={"level": e.level_rows()})
    assert info2["level_hash"] == info["level_hash"] and info2["state"] == info["state"]
    assert np.array_equal(obs["images"][0], obs2["images"][0])
    with pytest.raises(ValueError, match="task"):
        e.reset(options={"level": ["task swap"] + e.level_rows()[1:]})
    e.close()
    with pytest.raises(ValueError, match="unknown task"):
        envs.make("manipulation", task="juggle")


_SNIPPET = (
    "import hashlib, atlasva.envs as E; e=E.make('manipulation', task='swap', width=48); o,i=e.reset(seed=4);"
    "o2=e.step('<think>.</think><answer>' + ' | '.join(e.solve()[:2]) + '</answer>');"
    "print(i['level_hash'], hashlib.sha256(o['images'][0].tobytes()+o2[0]['images'][0].tobytes()).hexdigest(), o2[4]['state'])"
)


def test_deterministic_across_processes():
    outs = set()
    for hs in ("1", "777"):
        out = subprocess.run([sys.executable, "-c", _SNIPPET], env={**os.environ, "PYTHONHASHSEED": hs},
                             capture_output=True, text=True, check=True)
        outs.add(out.stdout.strip())
    assert len(outs) == 1
    e = envs.make("manipulation", task="swap", width=48)
    o, i = e.reset(seed=4)
    o2 = e.step("<think>.</think><answer>" + " | ".join(e.solve()[:2]) + "</answer>")
    digest = hashlib.sha256(o["images"][0].tobytes() + o2[0]["images"][0].tobytes()).hexdigest()
    assert outs == {f"{i['level_hash']} {digest} {o2[4]['state']}"}
    e.close()
