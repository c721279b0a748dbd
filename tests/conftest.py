"""Session-wide test settings."""

import os

# MuJoCo picks its GL backend at first import: make every test that renders use CPU OSMesa,
# whichever test module happens to import mujoco first.
os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory):
    """The tiny default policy, created once per test session (tokenizer trained on the envs' text)."""
    import torch

    from atlasva.policy import create_tiny_policy

    torch.set_num_threads(1)  # tiny models decode far faster on one thread on a shared CPU
    return create_tiny_policy(tmp_path_factory.mktemp("policy") / "policy-init")


# The engine suites (tests/engines/vllm, tests/engines/verl) run in their own environments
# (`make test-vllm`, `make test-verl`): their packages pin versions that clash with the main one.
if not os.environ.get("ATLASVA_ENGINE_TESTS"):
    collect_ignore = ["engines"]
