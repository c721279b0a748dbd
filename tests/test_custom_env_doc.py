"""docs/custom_env.md: its example env is complete, under 50 lines, and passes check_env."""

from pathlib import Path

from gymnasium.utils.env_checker import check_env

from atlasva import envs
from atlasva.envs import registry

DOC = Path(__file__).resolve().parents[1] / "docs" / "custom_env.md"


def _blocks():
    text = DOC.read_text()
    return [b.split("```")[0] for b in text.split("```python\n")[1:]]


def test_doc_example_runs_and_passes_check_env():
    example, usage = _blocks()[:2]
    assert len(example.strip().splitlines()) < 50
    registry._REGISTRY.pop("corridor", None)
    try:
        namespace: dict = {}
        exec(compile(example, str(DOC), "exec"), namespace)
        env = envs.make("corridor", length=6, render_mode="rgb_array")
        check_env(env)
        exec(compile(usage, str(DOC), "exec"), {})
        env = envs.make("corridor", length=7, format="no_think")
        env.reset(seed=0)
        plan = env.solve()
        _, reward, terminated, _, info = env.step("<answer>" + ", ".join(plan) + "</answer>")
        assert terminated and info["metrics"]["success"] and reward > 1.0
    finally:
        registry._REGISTRY.pop("corridor", None)
