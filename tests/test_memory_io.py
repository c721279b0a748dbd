"""SkillMemory save/load (exact round trip, clear errors), PNG panel, and a real FrozenLake run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from memory_helpers import episode, heuristics_3x3

from atlasva.memory import MemoryConfig, MemoryLoadError, SkillMemory, episode_meta
from atlasva.rollout.episode import Episode, Turn

SUCCESS = [(0, 0), (1, 0), (2, 0), (2, 1), (2, 2)]
FAIL = [(0, 0), (0, 1), (1, 1)]


def evolved() -> SkillMemory:
    mem = SkillMemory(MemoryConfig(skill_min_support=3, ema=0.3))
    for k in range(3):
        mem.update([episode(FAIL, "failure", env="frozenlake", level=f"L{k % 2}") for _ in range(3)]
                   + [episode(SUCCESS, "success", env="frozenlake", level=f"L{k % 2}"),
                      episode([(0, 0), (0, 1)], "truncated", env="frozenlake", frames=False)])
    return mem


def test_save_load_round_trips_exactly(tmp_path):
    mem = evolved()
    assert mem.exemplars and mem.skill_lines("frozenlake")
    mem.save(tmp_path / "m")
    back = SkillMemory.load(tmp_path / "m")
    assert back.state_equal(mem)
    assert back.version == mem.version == 3
    meta = episode_meta("frozenlake", "L0", heuristics_3x3(), [0, 0])
    obs = {"text": "<image>", "images": (np.zeros((24, 24, 3), np.uint8),)}
    t1, i1 = mem.snapshot().inject(meta, obs, 0)
    t2, i2 = back.snapshot().inject(meta, obs, 0)
    assert t1 == t2 and len(i1) == len(i2) and all(np.array_equal(a, b) for a, b in zip(i1, i2))
    cells = [[0, 0], [1, 0], [2, 0]]
    assert back.snapshot().shaping(meta, cells, False, 0.95) == mem.snapshot().shaping(meta, cells, False, 0.95)
    # the loaded memory keeps evolving identically
    more = [episode(SUCCESS, "success", env="frozenlake", level="L0"), episode(FAIL, "failure", env="frozenlake", level="L0")]
    mem.update(more)
    back.update(more)
    assert back.state_equal(mem)
    # no pickle anywhere: a JSON file and a safetensors file
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["arrays.safetensors", "memory.json"]


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(MemoryLoadError, match="no memory folder"):
        SkillMemory.load(tmp_path / "missing")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "model.bin").write_bytes(b"\x00" * 10)
    with pytest.raises(MemoryLoadError, match="not a SkillMemory folder"):
        SkillMemory.load(tmp_path / "foreign")
    (tmp_path / "foreign" / "memory.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(MemoryLoadError, match="not a SkillMemory state"):
        SkillMemory.load(tmp_path / "foreign")
    d = evolved().save(tmp_path / "m")
    blob = bytearray((d / "arrays.safetensors").read_bytes())
    blob[-5] ^= 0xFF
    (d / "arrays.safetensors").write_bytes(bytes(blob))
    with pytest.raises(MemoryLoadError, match="corrupted: its checksum"):
        SkillMemory.load(d)
    d2 = evolved().save(tmp_path / "m2")
    (d2 / "memory.json").write_text((d2 / "memory.json").read_text()[:-40])
    with pytest.raises(MemoryLoadError, match="not valid JSON"):
        SkillMemory.load(d2)
    d3 = evolved().save(tmp_path / "m3")
    state = json.loads((d3 / "memory.json").read_text())
    del state["instances"][0]["updates"]
    (d3 / "memory.json").write_text(json.dumps(state))
    with pytest.raises(MemoryLoadError, match="inconsistent"):
        SkillMemory.load(d3)


def test_render_png_panel(tmp_path):
    from PIL import Image

    p = evolved().render_png(tmp_path / "panel.png")
    im = Image.open(p)
    assert im.size[0] >= 400 and im.size[1] >= 200
    p2 = SkillMemory().render_png(tmp_path / "empty.png")
    assert Image.open(p2).size[0] >= 400


def _run(env, actions: list[str], seed: int) -> Episode:
    from atlasva import formats

    obs, info = env.reset(seed=seed)
    ep = Episode(env_name="frozenlake", seed=seed, level_hash=info["level_hash"], start_cell=info["cells"][0],
                 heuristics=env.grid_heuristics(), group_id=f"s{seed}")
    for a in actions:
        text = formats.answer([a], "no_think")
        new_obs, _, term, trunc, info = env.step(text)
        ep.turns.append(Turn(prompt_text=obs["text"], response_text=text, actions=info["actions"], cells=info["cells"],
                             metrics=info["metrics"], terminated=term, truncated=trunc, frames=list(obs["images"])))
        obs = new_obs
        if term or trunc:
            break
    if info["metrics"]["success"]:
        ep.finish("success")
    elif ep.turns and ep.turns[-1].terminated:
        ep.finish("failure", info["failure"])
    else:
        ep.finish("truncated")
    return ep


def test_real_frozenlake_danger_on_holes_and_affinity_on_the_solver_path():
    from atlasva.envs import make

    env = make("frozenlake", size=4, format="no_think", max_actions_per_turn=1, max_turns=12, obs_mode="vision")
    moves = {"Left": (0, -1), "Down": (1, 0), "Right": (0, 1), "Up": (-1, 0)}

    def walk_into_a_hole(heur, start):
        """Shortest action list from ``start`` into some hole without touching other holes or the goal."""
        holes, goals = {tuple(h) for h in heur["hazard"]}, {tuple(g) for g in heur["goals"]}
        prev, frontier = {start: None}, [start]
        while frontier:
            nxt = []
            for cell in frontier:
                for name, (dr, dc) in moves.items():
                    n = (cell[0] + dr, cell[1] + dc)
                    if n in holes:
                        acts, c = [name], cell
                        while prev[c] is not None:
                            c, a = prev[c]
                            acts.append(a)
                        return list(n), acts[::-1]
                    if 0 <= n[0] < 4 and 0 <= n[1] < 4 and n not in prev and n not in goals:
                        prev[n] = (cell, name)
                        nxt.append(n)
            frontier = nxt
        return None, None

    for seed in range(100):
        env.reset(seed=seed)
        heur = env.grid_heuristics()
        hole, path_to_hole = walk_into_a_hole(heur, tuple(env.cell()))
        if hole is not None:
            break
    env.reset(seed=seed)
    plan = env.solve()
    assert path_to_hole is not None
    mem = SkillMemory()
    for _ in range(2):
        mem.update([_run(env, plan, seed), _run(env, path_to_hole, seed)])
    atlas = mem.instance_atlas("frozenlake", env.level_hash)
    assert atlas.danger[tuple(hole)] > 0.3  # Beta-smoothed failure rate on the hole
    solver_cells = {tuple(c) for c in _run(env, plan, seed).cells()}
    fail_cells = {tuple(c) for c in _run(env, path_to_hole, seed).cells()}
    for c in solver_cells - fail_cells:
        assert atlas.affinity[c] > 0.6
    for c in fail_cells - solver_cells:
        assert atlas.affinity[c] < 0.4
    ex = [e for e in mem.exemplars if e.kind == "failure"]
    assert ex and ex[0].caption().endswith("fell into a hole, seen 2×") and ex[0].image is not None
