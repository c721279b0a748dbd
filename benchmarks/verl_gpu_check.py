"""GPU check of the verl engine: a few verl PPO steps with vLLM rollouts on Sokoban, a random-init model with
Qwen2.5-VL-3B's real geometry, no downloads. Prints steps/s and tokens/s. Run through gpu_check.sh.

    python benchmarks/verl_gpu_check.py [--steps 3] [--estimator turn_grpo] [--out /tmp/atlasva-gpu-check]
    python benchmarks/verl_gpu_check.py --dry-run --geometry tiny   # CPU: the same path up to verl's start

The model: Qwen2.5-VL-3B-Instruct's config (36 layers, hidden 2048, 16 heads / 2 KV heads, intermediate
11008, vocab 151,936, M-RoPE [16, 24, 24]; vision tower depth 32, hidden 1280; 3.75 B parameters)
initialised at random on the GPU, with atlasva's env-trained tokenizer (its ids are a subset of the
vocabulary; generation is restricted to them by the agent loop's ``allowed_token_ids``). The run uses the
1-GPU recipe (configs/sokoban-verl-1gpu.yaml) shrunk to fit minutes: 4 levels x 4 episodes per step,
3 turns of at most 64 tokens, turn-level GRPO (no critic model to load), memory on, no validation, no
checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

QWEN25_VL_3B = {  # Qwen2.5-VL-3B-Instruct config.json (geometry only)
    "text": {"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 16,
             "num_key_value_heads": 2, "max_position_embeddings": 128000, "rms_norm_eps": 1e-6, "vocab_size": 151936,
             "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
             "tie_word_embeddings": True, "use_sliding_window": False, "hidden_act": "silu"},
    "vision": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "out_hidden_size": 2048,
               "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
               "fullatt_block_indexes": [7, 15, 23, 31], "in_chans": 3, "hidden_act": "silu"},
}
TINY = {  # the same code path at a CPU-friendly size (dry runs and tests)
    "text": {**QWEN25_VL_3B["text"], "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
             "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 1024,
             "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [8, 12, 12]}},
    "vision": {**QWEN25_VL_3B["vision"], "depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 1,
               "out_hidden_size": 128, "fullatt_block_indexes": [1]},
}


def model_config(geometry: dict, tokenizer) -> object:
    """A Qwen2.5-VL config with ``geometry`` whose special-token ids are ``tokenizer``'s."""
    from atlasva.policy.model import qwen25_vl_config

    return qwen25_vl_config(dict(geometry["text"]), dict(geometry["vision"]), tokenizer)


def count_parameters(config) -> int:
    """Parameters of a model built from ``config`` on the meta device (no memory)."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    return sum(p.numel() for p in model.parameters())


def build_model(directory: Path, geometry: dict) -> Path:
    """Random-init model + atlasva's tokenizer and image processor as a Hugging Face folder (bf16 on a GPU)."""
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    from atlasva.policy.processor import PolicyProcessor, QwenImageProcessor
    from atlasva.policy.tokenizer import build_tokenizer

    if (directory / "config.json").is_file():
        return directory
    tokenizer = build_tokenizer(1024)
    config = model_config(geometry, tokenizer)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration(config).to(dtype)
    model.generation_config = GenerationConfig(eos_token_id=config.text_config.eos_token_id,
                                               pad_token_id=config.text_config.pad_token_id, bos_token_id=None)
    tmp = directory.with_name(directory.name + ".tmp")
    model.save_pretrained(str(tmp))
    PolicyProcessor(tokenizer, QwenImageProcessor(min_pixels=56 * 56, max_pixels=28 * 28 * 256)).save_pretrained(tmp)
    tmp.replace(directory)
    del model
    return directory


def train_config(model_path: Path, out: Path, steps: int, estimator: str):
    from atlasva.config import load_config
    from atlasva.train import TrainConfig

    group = 1 if estimator in ("gae", "bi_level_gae", "turn_gae") else 4
    cfg, name = load_config(TrainConfig, "sokoban-verl-1gpu", [
        f"policy.model.path={model_path}", f"run.root={out / 'runs'}", "run.resume=false",
        f"trainer.steps={steps}", f"trainer.levels_per_step={16 // group}", f"trainer.group_size={group}",
        f"algorithm.estimator={estimator}", "rollout.max_turns=3", "rollout.max_tokens_per_turn=64",
        "rollout.max_context_tokens=2048", "eval.episodes=8", "verl.max_prompt_length=1024",
        f"verl.ppo_mini_batch_size={16 // group}", "verl.test_freq=0", "verl.save_freq=0",
        "verl.val_before_train=false", "verl.agent_workers=2", "verl.logger=[console,file]",
    ])
    cfg.validate()
    return cfg, name


def report(metrics_file: Path, wall: float, samples_per_step: int) -> dict:
    """Steps/s and tokens/s from verl's per-step metrics (its file logger)."""
    rows = [json.loads(line)["data"] for line in metrics_file.read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "perf/time_per_step" in r]
    step_s = [r["perf/time_per_step"] for r in steps]
    tokens = [r["perf/total_num_tokens"] / r["perf/time_per_step"] for r in steps]
    gen = [r["response_length/mean"] * samples_per_step / r["timing_s/gen"]
           for r in steps if "timing_s/gen" in r and "response_length/mean" in r]
    return {"steps": len(steps), "wall_s": wall, "steps_per_s": len(step_s) / sum(step_s) if step_s else 0.0,
            "tokens_per_s": sum(tokens) / len(tokens) if tokens else 0.0,
            "rollout_tokens_per_s": sum(gen) / len(gen) if gen else None,
            "mean_episode_reward": [r.get("critic/score/mean") for r in steps]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--estimator", default="turn_grpo")
    ap.add_argument("--geometry", choices=("3b", "tiny"), default="3b")
    ap.add_argument("--out", default="/tmp/atlasva-gpu-check")
    ap.add_argument("--dry-run", action="store_true", help="write everything, validate verl's config, do not start")
    args = ap.parse_args(argv)
    from omegaconf import OmegaConf

    from atlasva.integrations.verl.launch import prepare, start

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    geometry = QWEN25_VL_3B if args.geometry == "3b" else TINY
    t0 = time.perf_counter()
    model = build_model(out / f"model-{args.geometry}", geometry)
    print(f"model ({args.geometry}) ready in {time.perf_counter() - t0:.0f} s: {model}", flush=True)
    cfg, name = train_config(model, out, args.steps, args.estimator)
    run_dir, config_path = prepare(cfg, name)
    metrics_file = run_dir / "verl-metrics.jsonl"
    config = OmegaConf.load(str(config_path))
    config.ray_kwargs.ray_init.runtime_env.env_vars = {"VERL_FILE_LOGGER_PATH": str(metrics_file)}
    config_path.write_text(OmegaConf.to_yaml(config))
    if args.dry_run:
        from verl.trainer.ppo.utils import need_critic, need_reference_policy
        from verl.utils.config import validate_config

        validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
        print(f"dry run: verl config valid: {config_path}")
        return 0
    t1 = time.perf_counter()
    start(config_path)
    result = report(metrics_file, time.perf_counter() - t1, cfg.trainer.levels_per_step * cfg.trainer.group_size)
    result.update(geometry=args.geometry, estimator=args.estimator, model_build_s=t1 - t0)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"verl PPO on Sokoban ({args.geometry}): {result['steps']} steps, {result['steps_per_s']:.3f} steps/s, "
          f"{result['tokens_per_s']:.0f} tokens/s (prompt+response), rollout {result['rollout_tokens_per_s']} "
          f"generated tokens/s; wall {result['wall_s']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
