"""Policy config schemas (plain dataclasses; OmegaConf-compatible, so they nest into run configs)."""

from __future__ import annotations

from dataclasses import dataclass, field

BACKENDS = ("hf", "vllm", "openai")
DEVICES_HELP = "'auto', 'cpu', 'cuda' or 'cuda:N'"
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class TinyModelConfig:
    """The default policy: a random-init Qwen2.5-VL this small runs on a laptop CPU."""

    vocab_size: int = 1024  # BPE target; the model's vocab is the tokenizer's size rounded up to 64
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 8192
    rope_theta: float = 10000.0
    #: how the rotary frequencies split over (time, row, column): "interleaved" cycles t,h,w so each axis
    #: spans the whole spectrum; "chunked" is Qwen2.5-VL's own split, which leaves image columns ~0.003
    #: rad apart at this size (the tiny LM cannot tell cells apart)
    mrope_layout: str = "interleaved"
    vision_hidden_size: int = 64
    vision_intermediate_size: int = 128
    vision_depth: int = 2
    vision_num_heads: int = 4
    patch_size: int = 14
    spatial_merge_size: int = 2  # 28 px = one merged vision token
    temporal_patch_size: int = 2
    min_pixels: int = 28 * 28
    max_pixels: int = 28 * 28 * 256
    tie_word_embeddings: bool = True
    seed: int = 0


@dataclass
class LoraSettings:
    enable: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    #: module names (suffixes) inside the language model that get adapters
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    #: also adapt the vision tower (its attention is `qkv`/`proj`, its MLP shares the names above)
    vision: bool = False


@dataclass
class ModelConfig:
    #: a local folder holding a Qwen2.5-VL checkpoint + processor; empty = the tiny default policy
    path: str = ""
    #: where the tiny default is created and cached (e.g. RUN/policy-init); empty = the caller decides
    init_dir: str = ""
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bf16 on a bf16-capable GPU, else fp32) | float32 | bfloat16 | float16
    attn_implementation: str = "sdpa"  # sdpa | eager | flash_attention_2
    gradient_checkpointing: bool = False
    value_head: bool = False
    #: torch CPU threads (0 = leave torch's default). Tiny models decode ~6x faster with 1 thread on a
    #: busy 2-core machine (OpenMP spin-waits); set it once per process.
    cpu_threads: int = 0
    lora: LoraSettings = field(default_factory=LoraSettings)
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)


@dataclass
class SamplingConfig:
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_new_tokens: int = 128
    seed: int = 0
    #: generate this many prompts at once with the hf backend (memory bound)
    batch_size: int = 64


@dataclass
class OpenAIConfig:
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = ""
    api_key_env: str = "OPENAI_API_KEY"  # name of the environment variable holding the key ("" = none)
    timeout_s: float = 120.0
    max_retries: int = 4
    backoff_s: float = 1.0  # first retry waits up to this long (jittered), then doubles; Retry-After wins
    max_backoff_s: float = 30.0
    requests_per_second: float = 0.0  # 0 = no rate limit
    max_concurrency: int = 8
    logprobs: bool = True
    #: ask a vLLM server for the generated token ids (`return_token_ids`); other servers return none
    request_token_ids: bool = False


@dataclass
class VLLMConfig:
    """vLLM's offline engine on the policy's own model folder (``policy.backend=vllm``; the ``vllm`` extra)."""

    gpu_memory_utilization: float = 0.5  # share of the GPU for weights + KV cache (the trainer needs the rest)
    tensor_parallel_size: int = 1
    max_model_len: int = 0  # 0 = the model's own limit
    max_num_seqs: int = 256  # sequences decoded together
    dtype: str = "auto"  # auto | bfloat16 | float16 | float32
    enforce_eager: bool = False  # true: no CUDA graphs (faster start, slower decode)
    enable_prefix_caching: bool = True  # multi-turn prompts share their history's KV cache
    max_images_per_prompt: int = 16  # an episode's images in one concatenated prompt
    #: CPU builds only: KV-cache size in GiB (vLLM's VLLM_CPU_KVCACHE_SPACE)
    cpu_kv_cache_gib: float = 1.0
    #: inside a trainer, copy the local model's weights into vLLM before a generation whenever they
    #: changed (an optimiser step, a checkpoint load); false = evaluation of a fixed checkpoint
    sync_weights: bool = True


@dataclass
class PolicyConfig:
    backend: str = "hf"  # hf | vllm | openai
    model: ModelConfig = field(default_factory=ModelConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    openai: OpenAIConfig = field(default_factory=OpenAIConfig)
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
