"""Fixtures of the verl engine suite (`make test-verl`: verl 0.9.1's pins, in its own venv)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory):
    from atlasva.policy import create_tiny_policy

    torch.set_num_threads(1)
    return create_tiny_policy(tmp_path_factory.mktemp("policy") / "policy-init")
