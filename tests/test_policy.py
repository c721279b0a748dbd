"""Policy: tiny Qwen2.5-VL, tokenizer, image processor, generation backends, scoring, LoRA, checkpointing."""

from __future__ import annotations

import importlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

importlib.import_module("transformers")  # installed by `make test`

from atlasva.policy import (  # noqa: E402
    QWEN_SPECIAL_TOKENS,
    Encoded,
    HFBackend,
    LoraSettings,
    ModelConfig,
    OpenAIBackend,
    OpenAIConfig,
    OpenAIError,
    Policy,
    PolicyConfig,
    PolicyModel,
    QwenImageProcessor,
    SamplingConfig,
    build_tokenizer,
    content_from_obs,
    create_tiny_policy,
    resolve_device,
    resolve_dtype,
)
from atlasva.policy.backends import RateLimiter  # noqa: E402
from atlasva.policy.model import MASKED_LOGPROB  # noqa: E402
from atlasva.policy.tokenizer import QWEN_VL_CHAT_TEMPLATE  # noqa: E402


def _image(seed: int = 0, size: tuple[int, int] = (112, 112)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def _prompt(seed: int = 0, text: str = "Reach the goal.") -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "You are a FrozenLake solver."},
        {"role": "user", "content": [{"type": "text", "text": "Board:\n"}, {"type": "image", "image": _image(seed)},
                                     {"type": "text", "text": f"\n{text}"}]},
    ]


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models decode far faster on one thread (2-thread OpenMP spins badly on a shared CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_tiny_policy(tmp_path_factory.mktemp("policy") / "policy-init")


@pytest.fixture(scope="module")
def pm(tiny_dir: Path) -> PolicyModel:
    return PolicyModel.from_pretrained(tiny_dir, device="cpu", dtype="float32")


# --------------------------------------------------------------------------- tokenizer
def test_tokenizer_special_tokens_and_round_trip(pm: PolicyModel) -> None:
    tok = pm.processor.tokenizer
    ids = [tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS]
    assert len(set(ids)) == len(QWEN_SPECIAL_TOKENS)
    for t, i in zip(QWEN_SPECIAL_TOKENS, ids):
        assert tok(t, add_special_tokens=False)["input_ids"] == [i], t
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    for text in ["<think>I will go Left, Up.</think><answer>Left, Up</answer>", "naïve → ↑↓ √×· 日本 \t\n  x",
                 "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n", ""]:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    # the env vocabulary compresses: a typical answer is far fewer tokens than characters
    answer = "<think>I will go Right, Down.</think><answer>Right, Down</answer>"
    assert len(tok(answer, add_special_tokens=False)["input_ids"]) < len(answer) / 2
    assert tok.chat_template == QWEN_VL_CHAT_TEMPLATE


def test_tokenizer_training_is_deterministic() -> None:
    corpus = ["the goal is left of the player", "<answer>Up, Down</answer>"] * 20
    a, b = build_tokenizer(300, corpus), build_tokenizer(300, corpus)
    assert a.get_vocab() == b.get_vocab()
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()


# --------------------------------------------------------------------------- images
@pytest.mark.parametrize("size", [(112, 112), (100, 150)])
def test_image_processor_matches_transformers(size: tuple[int, int]) -> None:
    ref_mod = importlib.import_module("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")  # the test extras install it; a missing one fails
    img = _image(1, size)
    ours = QwenImageProcessor(min_pixels=56 * 56, max_pixels=28 * 28 * 256)
    ref = ref_mod.Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 256)
    pv, grid = ours([img])
    out = ref(images=[img], return_tensors="pt")
    assert torch.equal(grid, out["image_grid_thw"])
    assert pv.shape == out["pixel_values"].shape
    torch.testing.assert_close(pv, out["pixel_values"].float(), atol=1e-5, rtol=1e-5)


def test_forward_with_112px_image(pm: PolicyModel) -> None:
    enc = pm.processor.encode_prompt(_prompt())
    assert enc.image_grid_thw is not None and enc.image_grid_thw.tolist() == [[1, 8, 8]]
    assert enc.input_ids.count(pm.processor.image_token_id) == 16  # 4×4 merged tokens of 28 px
    assert enc.pixel_values is not None and enc.pixel_values.shape == (64, 3 * 2 * 14 * 14)
    text_only = pm.processor.encode_prompt([{"role": "user", "content": "no image here"}])
    scores = pm.score([enc, text_only], with_entropy=True)
    assert scores.logprobs.shape == (2, len(enc))
    real = scores.logprobs[0, 1:]
    assert torch.isfinite(real).all() and (real < 0).all()
    blocked = torch.tensor([t in set(pm.blocked_ids) for t in enc.input_ids[1:]])
    assert blocked.any() and (real[blocked] == MASKED_LOGPROB).all() and (real[~blocked] > -50).all()
    assert scores.logprobs[1, len(text_only):].abs().sum() == 0  # right padding scores nothing
    assert scores.entropy is not None and (scores.entropy[0, 1:] > 0).all()
    with pytest.raises(ValueError, match="image"):
        pm.processor.collate([Encoded(enc.input_ids)])  # image tokens without their image


def test_content_from_obs_and_errors(pm: PolicyModel) -> None:
    from atlasva.envs import make

    env = make("frozenlake")
    obs, _ = env.reset(seed=3)
    content = content_from_obs(obs["text"], obs["images"])
    assert sum(1 for c in content if c["type"] == "image") == len(obs["images"])
    enc = pm.processor.encode_prompt([{"role": "system", "content": env.system_prompt()},
                                      {"role": "user", "content": content}])
    assert enc.num_images == len(obs["images"])
    with pytest.raises(ValueError, match="placeholder"):
        content_from_obs("no placeholder", obs["images"])
    with pytest.raises(ValueError, match="role"):
        pm.processor.encode_prompt([{"content": "x"}])


# --------------------------------------------------------------------------- generation
def test_generation_never_emits_special_or_vision_tokens(pm: PolicyModel) -> None:
    policy = Policy(HFBackend(pm), pm)
    sampling = SamplingConfig(temperature=2.0, top_p=1.0, max_new_tokens=40, seed=7)
    prompts = [_prompt(i) for i in range(6)]
    outs = policy.generate(prompts, sampling=sampling)
    blocked = set(pm.blocked_ids)
    assert {pm.processor.image_token_id, pm.processor.video_token_id, 0, 1} <= blocked
    n_tokens = 0
    for out in outs:
        n_tokens += len(out.token_ids)
        assert not blocked & set(out.token_ids), out.token_ids
        assert len(out.logprobs) == len(out.token_ids) and all(lp <= 0 for lp in out.logprobs)
        assert out.finish_reason in ("stop", "length")
        if out.finish_reason == "stop":
            assert out.token_ids[-1] == pm.processor.eos_token_id
        else:
            assert len(out.token_ids) == sampling.max_new_tokens
    assert n_tokens >= 100
    # the generated ids feed straight back into the next turn (no re-tokenisation) and a forward works
    seqs = [
        policy.encode_prompt(p) + o.token_ids + policy.encode_user_turn(
            content_from_obs("Next:\n<image>", [_image(9)]), close_assistant=o.finish_reason != "stop")
        for p, o in zip(prompts[:2], outs[:2])
    ]
    assert all(s.num_images == 2 for s in seqs)
    assert torch.isfinite(policy.score(seqs).logprobs).all()
    again = policy.generate(prompts, sampling=sampling, seed=123)
    same = policy.generate(prompts, sampling=sampling, seed=123)
    assert [o.token_ids for o in again] == [o.token_ids for o in same]


def test_user_turn_suffix_matches_full_conversation(pm: PolicyModel) -> None:
    proc = pm.processor
    reply = "<think>I go right.</think><answer>Right</answer>"
    reply_ids = proc.tokenizer(reply, add_special_tokens=False)["input_ids"] + [proc.eos_token_id]
    next_user = [{"type": "text", "text": "Now:"}, {"type": "image", "image": _image(5)}]
    incremental = proc.encode_prompt(_prompt()) + reply_ids + proc.encode_user_turn(next_user)
    full = proc.encode_prompt([*_prompt(), {"role": "assistant", "content": reply},
                               {"role": "user", "content": next_user}])
    assert incremental.input_ids == full.input_ids
    assert incremental.pixel_values is not None and full.pixel_values is not None
    assert torch.equal(incremental.pixel_values, full.pixel_values)
    assert torch.equal(incremental.image_grid_thw, full.image_grid_thw)
    # the source images travel with their tokens (engines that preprocess images themselves take them)
    assert [im.tobytes() for im in incremental.images] == [_image(0).tobytes(), _image(5).tobytes()]
    assert (incremental + [1, 2]).images == incremental.images
    closed = proc.user_turn_text("x", close_assistant=True)
    assert closed.startswith("<|im_end|>") and not proc.user_turn_text("x").startswith("<|im_end|>")


def test_logprobs_match_generate_scores(pm: PolicyModel) -> None:
    policy = Policy(HFBackend(pm), pm)
    prompts = [_prompt(0), [{"role": "user", "content": "Say something."}]]
    for temperature in (0.0, 0.7):
        sampling = SamplingConfig(temperature=temperature, max_new_tokens=12, seed=1)
        outs = policy.generate(prompts, sampling=sampling)
        seqs = [policy.encode_prompt(p) + o.token_ids for p, o in zip(prompts, outs)]
        scores = policy.score(seqs, temperature=temperature)
        for i, (p, o) in enumerate(zip(prompts, outs)):
            start = len(policy.encode_prompt(p))
            got = scores.logprobs[i, start : start + len(o.token_ids)]
            torch.testing.assert_close(got, torch.tensor(o.logprobs), atol=1e-4, rtol=1e-4)
        if temperature == 0.0:  # greedy picks the argmax of the masked distribution
            hidden = pm.hidden_states(pm.processor.collate([seqs[1]], padding_side="right"))
            logits = pm.mask_logits(pm.base.get_output_embeddings()(hidden).float())
            start = len(policy.encode_prompt(prompts[1]))
            argmax = logits[0, start - 1 : start - 1 + len(outs[1].token_ids)].argmax(-1).tolist()
            assert argmax == outs[1].token_ids


@pytest.mark.parametrize("layout,resolves", [("interleaved", True), ("chunked", False)])
def test_tiny_rope_tells_image_rows_and_columns_apart(layout: str, resolves: bool) -> None:
    # the rotary angle between two neighbouring image cells, per axis: a tiny LM can only tell cells apart
    # (and so see the board) when some frequency turns them clearly apart
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLRotaryEmbedding

    from atlasva.policy.config import TinyModelConfig
    from atlasva.policy.model import tiny_model_config
    from atlasva.policy.tokenizer import build_tokenizer as _build

    config = tiny_model_config(TinyModelConfig(mrope_layout=layout), _build())
    rotary = Qwen2_5_VLRotaryEmbedding(config.text_config)
    x = torch.zeros(1, 1, 8)
    base = torch.tensor([20, 20, 20])
    for axis in (1, 2):  # image row (h), image column (w)
        moved = base.clone()
        moved[axis] += 1
        pos = torch.stack([base, moved], dim=1)[:, None, :]  # (3, 1, 2)
        cos, sin = rotary(x, pos)
        angle = torch.atan2(sin, cos)  # (1, 2, head_dim)
        largest = (angle[0, 1] - angle[0, 0]).abs().max().item()
        assert (largest > 0.25) == resolves, (layout, axis, largest)
    with pytest.raises(ValueError, match="mrope_layout"):
        tiny_model_config(TinyModelConfig(mrope_layout="spiral"), _build())


# --------------------------------------------------------------------------- save / load / value head
def test_save_load_by_path_identical_logits(pm: PolicyModel, tmp_path: Path) -> None:
    batch = pm.processor.collate([pm.processor.encode_prompt(_prompt(2))])
    head = PolicyModel.from_pretrained(pm_path := pm.save_pretrained(tmp_path / "saved"), value_head=True)
    assert head.value_head is not None
    with torch.no_grad():
        head.value_head.proj.bias.fill_(0.25)
    head.save_pretrained(tmp_path / "with-head")
    loaded = Policy.from_config(PolicyConfig(model=ModelConfig(path=str(pm_path), device="cpu", dtype="float32")))
    assert loaded.model is not None
    with torch.no_grad():
        a = pm.base(**pm.to_device(batch), position_ids=pm.position_ids(batch)).logits
        b = loaded.model.base(**batch, position_ids=loaded.model.position_ids(batch)).logits
    assert torch.equal(a, b)
    reloaded = PolicyModel.from_pretrained(tmp_path / "with-head")
    assert reloaded.value_head is not None
    values = reloaded.score(batch, with_values=True).values
    assert values is not None and torch.allclose(values[0, 1:], torch.full_like(values[0, 1:], 0.25))
    with pytest.raises(FileNotFoundError, match="not a local model folder"):
        PolicyModel.from_pretrained(tmp_path / "missing")


def test_tiny_policy_creation_is_cached_and_deterministic(tiny_dir: Path, tmp_path: Path) -> None:
    assert create_tiny_policy(tiny_dir) == tiny_dir  # reused, not rebuilt
    other = create_tiny_policy(tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json", "preprocessor_config.json"):
        assert (other / name).read_bytes() == (tiny_dir / name).read_bytes(), name
    from atlasva.policy import TinyModelConfig

    with pytest.raises(ValueError, match="different model.tiny config"):
        create_tiny_policy(tiny_dir, TinyModelConfig(hidden_size=64))


# --------------------------------------------------------------------------- device / dtype / LoRA / checkpointing
def test_device_and_dtype_selection(tiny_dir: Path) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="model.dtype"):
        resolve_dtype("float8", torch.device("cpu"))
    with pytest.raises(ValueError, match="model.device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    bf = PolicyModel.from_pretrained(tiny_dir, device="cpu", dtype="bfloat16")
    assert bf.dtype == torch.bfloat16
    scores = bf.score([bf.processor.encode_prompt(_prompt())])
    assert scores.logprobs.dtype == torch.float32 and torch.isfinite(scores.logprobs).all()


def test_lora_trains_only_adapters_and_saves_merged(tiny_dir: Path, tmp_path: Path) -> None:
    importlib.import_module("peft")  # installed by `make test`
    cfg = ModelConfig(device="cpu", dtype="float32", value_head=True, lora=LoraSettings(enable=True, r=4, alpha=8))
    pm = PolicyModel.from_config(cfg, init_dir=tiny_dir)
    assert pm.is_lora
    names = [n for n, p in pm.model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert all("language_model" in n for n in names)  # vision tower untouched by default
    frozen = {n: p.detach().clone() for n, p in pm.model.named_parameters() if not p.requires_grad}
    batch = pm.processor.collate([pm.processor.encode_prompt(_prompt())], padding_side="right")
    opt = torch.optim.SGD(pm.trainable_parameters(), lr=0.5)
    pm.train()
    for _ in range(2):
        scores = pm.score(batch, with_values=True)
        loss = -scores.logprobs.sum() + scores.values.pow(2).sum()  # type: ignore[union-attr]
        opt.zero_grad()
        loss.backward()
        opt.step()
    pm.eval()
    for n, p in pm.model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    # merged save = a plain HF folder with the LoRA effect baked in
    out = pm.save_pretrained(tmp_path / "merged")
    assert not (out / "adapter_config.json").exists()
    plain = PolicyModel.from_pretrained(out)
    assert not plain.is_lora
    with torch.no_grad():
        a = pm.score(batch).logprobs
        b = plain.score(batch).logprobs
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    base = PolicyModel.from_pretrained(tiny_dir)
    assert not torch.allclose(base.score(batch).logprobs, b)


def test_gradient_checkpointing_forward_backward(tiny_dir: Path) -> None:
    grads = []
    for gc in (False, True):
        pm = PolicyModel.from_config(ModelConfig(device="cpu", dtype="float32", gradient_checkpointing=gc),
                                     init_dir=tiny_dir)
        assert pm.gradient_checkpointing == gc
        pm.train()
        batch = pm.processor.collate([pm.processor.encode_prompt(_prompt())], padding_side="right")
        pm.score(batch).logprobs.sum().backward()
        grads.append({n: p.grad.clone() for n, p in pm.model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------- openai backend
class _FakeServer:
    """An OpenAI-compatible /chat/completions on 127.0.0.1 that fails on purpose first."""

    def __init__(self, failures: list[int]) -> None:
        self.failures = list(failures)
        self.requests: list[dict[str, Any]] = []
        self.auth: list[str | None] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                outer.auth.append(self.headers.get("Authorization"))
                if body.get("model") == "bad":
                    return self._send(400, {"error": {"message": "unknown model"}})
                if outer.failures:
                    code = outer.failures.pop(0)
                    return self._send(code, {"error": {"message": "try again"}}, {"Retry-After": "0"})
                n_images = sum(1 for m in body["messages"] if isinstance(m["content"], list)
                               for c in m["content"] if c["type"] == "image_url")
                self._send(200, {"choices": [{
                    "message": {"role": "assistant", "content": f"<answer>Up</answer> images={n_images}"},
                    "finish_reason": "stop",
                    "logprobs": {"content": [{"token": "<", "logprob": -0.5}, {"token": "answer", "logprob": -0.25}]},
                }]})

            def _send(self, code: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> _FakeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake_server() -> Iterator[_FakeServer]:
    with _FakeServer([500, 429]) as server:
        yield server


def test_openai_backend_with_retries(fake_server: _FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATLASVA_TEST_KEY", "sk-test")
    cfg = OpenAIConfig(base_url=fake_server.url, model="tiny", api_key_env="ATLASVA_TEST_KEY", backoff_s=0.01,
                       max_retries=3, requests_per_second=200.0, max_concurrency=1)
    policy = Policy.from_config(PolicyConfig(backend="openai", openai=cfg,
                                             sampling=SamplingConfig(max_new_tokens=16, temperature=0.5)))
    outs = policy.generate([_prompt(0)])
    assert outs[0].text == "<answer>Up</answer> images=1"
    assert outs[0].logprobs == [-0.5, -0.25] and outs[0].finish_reason == "stop" and outs[0].token_ids == []
    assert isinstance(policy.backend, OpenAIBackend) and policy.backend.retries == 2
    assert len(fake_server.requests) == 3 and set(fake_server.auth) == {"Bearer sk-test"}
    body = fake_server.requests[-1]
    assert body["max_tokens"] == 16 and body["temperature"] == 0.5 and body["model"] == "tiny"
    url = body["messages"][1]["content"][1]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    # several prompts run concurrently and come back in order
    policy.backend.config.max_concurrency = 4
    many = policy.generate([_prompt(i) for i in range(3)] + [[{"role": "user", "content": "text only"}]])
    assert [o.text.rsplit("=", 1)[1] for o in many] == ["1", "1", "1", "0"]
    with pytest.raises(TypeError, match="chat messages"):
        policy.generate([Encoded([1, 2])])
    with pytest.raises(RuntimeError, match="no local model"):
        policy.score([Encoded([1, 2])])


def test_rate_limiter_spaces_requests() -> None:
    limiter = RateLimiter(50.0)  # one start per 20 ms
    start = time.monotonic()
    for _ in range(5):
        limiter.wait()
    assert time.monotonic() - start >= 0.075
    unlimited = RateLimiter(0.0)
    start = time.monotonic()
    for _ in range(100):
        unlimited.wait()
    assert time.monotonic() - start < 0.05


def test_openai_backend_gives_up_clearly(fake_server: _FakeServer) -> None:
    bad = OpenAIBackend(OpenAIConfig(base_url=fake_server.url, model="bad", api_key_env="", backoff_s=0.01))
    with pytest.raises(OpenAIError, match="HTTP 400"):
        bad.generate([[{"role": "user", "content": "hi"}]])
    fake_server.failures = [503, 503, 503]
    flaky = OpenAIBackend(OpenAIConfig(base_url=fake_server.url, model="m", api_key_env="", backoff_s=0.01,
                                       max_retries=1))
    with pytest.raises(OpenAIError, match="after 2 attempts"):
        flaky.generate([[{"role": "user", "content": "hi"}]])
    with pytest.raises(ValueError, match="openai.model"):
        OpenAIBackend(OpenAIConfig(base_url=fake_server.url, model=""))


def test_vllm_backend_refuses_a_layout_it_would_run_differently(tiny_dir: Path) -> None:
    """The tiny default's interleaved M-RoPE has 32 sections; vLLM's takes 3: a clear error before any engine
    starts (vLLM itself is tested in its own environment: `make test-vllm`)."""
    from atlasva.policy import ModelConfig, PolicyConfig

    with pytest.raises(ValueError, match="mrope_layout=chunked"):
        Policy.from_config(PolicyConfig(backend="vllm", model=ModelConfig(path=str(tiny_dir))))


def test_text_export_gives_the_same_text_logits(pm: PolicyModel, tiny_dir: Path, tmp_path: Path) -> None:
    """The decoder exported as a Qwen2 folder (what vLLM's CPU build serves) scores text exactly like the policy."""
    from transformers import Qwen2ForCausalLM

    from atlasva.policy.export import export_text_model, text_weight_name

    out = export_text_model(pm, tiny_dir, tmp_path / "text")
    twin = Qwen2ForCausalLM.from_pretrained(str(out)).eval()
    ids = torch.tensor([pm.processor.encode_prompt([{"role": "user", "content": "Push the box left."}]).input_ids])
    with torch.no_grad():
        a = twin(ids).logits
        b = pm.base(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=torch.zeros_like(ids)).logits
    assert torch.allclose(a, b, atol=1e-5)
    assert text_weight_name("model.visual.blocks.0.attn.qkv.weight") is None
    assert (out / "tokenizer_config.json").is_file()


def test_vllm_token_mask_takes_the_shorter_spelling() -> None:
    from atlasva.policy.backends import vllm_token_mask

    assert vllm_token_mask([5, 3, 3], 151936) == {"allowed_token_ids": [3, 5]}  # small tokenizer, big vocab
    mask = vllm_token_mask([i for i in range(100) if i not in (7, 42)], 100)  # a real tokenizer: block the few
    assert mask == {"logit_bias": {7: -100.0, 42: -100.0}}
