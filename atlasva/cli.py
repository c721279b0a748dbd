"""The ``atlasva`` command.

    atlasva envs list
    atlasva envs show sokoban --seed 3 --out level.png [key=value ...]
    atlasva envs play frozenlake --seed 3 [--format free_think] [key=value ...]
    atlasva baselines [CONFIG] [key=value ...] [--print-config]
    atlasva serve --host 127.0.0.1 --port 8000 --max-envs 256 [--token T]
    atlasva train|eval [CONFIG] [key=value ...];  atlasva inspect RUN
    atlasva vla {collect,train,eval} CONFIG [key=value ...]

Configs are YAML files in ``configs/`` chosen by name or path, with dotted overrides after them.
Errors in what a user typed print one line; ``--debug`` (anywhere) or ``ATLASVA_DEBUG=1`` shows the
traceback instead, for a bug report.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from atlasva import __version__


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"error: {item!r} must look like key=value (e.g. size=8)")
        k, _, v = item.partition("=")
        out[k] = yaml.safe_load(v) if v else ""
    return out


# --------------------------------------------------------------------------- envs


def _make_env(name: str, overrides: list[str], **extra: Any):
    from atlasva.envs.registry import load_spec

    spec = load_spec(name)
    return spec.make(**{**_parse_overrides(overrides), **extra})


def cmd_envs(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="atlasva envs", description="List, show and play environments.")
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="registered environments")
    show = sub.add_parser("show", help="render a level to PNG (and print its text form)")
    show.add_argument("name")
    show.add_argument("--seed", type=int, default=0)
    show.add_argument("--out", default=None, help="PNG path (default: <name>-<seed>.png)")
    show.add_argument("overrides", nargs="*", help="env config key=value")
    play = sub.add_parser("play", help="play in the terminal: type answers, see rewards and metrics")
    play.add_argument("name")
    play.add_argument("--seed", type=int, default=0)
    play.add_argument("--format", default="no_think", help="reasoning format (plain actions are wrapped in it)")
    play.add_argument("--max-turns", type=int, default=20)
    play.add_argument("overrides", nargs="*", help="env config key=value")
    args = p.parse_args(argv)

    from atlasva import envs

    if args.action == "list":
        for name in envs.names():
            cls = envs.env_class(name)
            doc = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip().splitlines()
            print(f"{name:<14} {doc[0] if doc else ''}")
        return 0
    if args.action == "show":
        from PIL import Image

        env = _make_env(args.name, args.overrides, obs_mode="both")
        _, info = env.reset(seed=args.seed)
        out = args.out or f"{args.name}-{args.seed}.png"
        Image.fromarray(env.render_rgb()).save(out)
        print(env.render_text())
        print(f"level {info['level_hash']}  seed {args.seed}  -> {out}")
        return 0
    return _play(args)


def _play(args: argparse.Namespace) -> int:
    from atlasva import formats

    env = _make_env(args.name, args.overrides, obs_mode="both", format=args.format)
    obs, info = env.reset(seed=args.seed)
    print(env.system_prompt(), "\n")
    print(obs["text"].replace("<image>", "[image]"))
    for turn in range(1, args.max_turns + 1):
        try:
            line = input(f"\nturn {turn}> ").strip()
        except EOFError:
            print()
            return 0
        if line in ("quit", "exit", "q"):
            return 0
        if line in ("solve", "hint"):
            print("optimal:", env.turn_plan())
            continue
        # plain actions ("Up, Left") are wrapped in the format; tagged text is sent as typed
        text = line if "<" in line else formats.answer([a.strip() for a in line.split(env.action_sep)], args.format, action_sep=env.action_sep)
        obs, reward, terminated, truncated, info = env.step(text)
        print(obs["text"].replace("<image>", "[image]"))
        print(f"parsed actions: {info['actions']}  reward: {reward:+.3f}  components: {info['reward_components']}")
        print(f"metrics: {info['metrics']}" + (f"  parse: {info['parse_error']}" if info["parse_error"] else ""))
        if terminated or truncated:
            print("SUCCESS" if info["metrics"]["success"] else f"episode over ({info['failure'] or 'truncated'})")
            return 0
    return 0


# --------------------------------------------------------------------------- baselines


def config_parser(prog: str, description: str, example: str) -> argparse.ArgumentParser:
    """The shared shape of config-driven commands: CONFIG (name or path), dotted overrides, --print-config."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("config", nargs="?", default=None, help="config name in configs/ or a YAML path (default: built-in)")
    p.add_argument("overrides", nargs="*", help=f"dotted overrides, e.g. {example}")
    p.add_argument("--print-config", action="store_true", help="show every key with its value and exit")
    return p


def load_command_config(schema: type, args: argparse.Namespace, extra: list[str] | None = None) -> tuple[Any, str] | None:
    """Load the config of a command; None when ``--print-config`` printed it instead."""
    from atlasva.config import load_config, to_yaml

    config, overrides = args.config, list(args.overrides)
    if config and "=" in config:  # no config name, only overrides
        overrides, config = [config, *overrides], None
    cfg, name = load_config(schema, config, overrides + list(extra or []))
    if args.print_config:
        print(to_yaml(cfg))
        return None
    return cfg, name


def cmd_baselines(argv: list[str]) -> int:
    p = config_parser("atlasva baselines", "Evaluate the optimal solver and a random agent on held-out levels.",
                      "episodes=50 run.resume=false")
    from atlasva.config import to_dict
    from atlasva.eval.baselines import BaselinesConfig, run_baselines
    from atlasva.runs import format_summary

    loaded = load_command_config(BaselinesConfig, p.parse_args(argv))
    if loaded is None:
        return 0
    cfg, name = loaded
    summary = run_baselines(cfg, f"baselines-{name}", to_dict(cfg))
    print(format_summary(summary))
    print(f"wall time {summary['wall_time_s']:.1f}s; run folder: {summary['run_dir']}")
    return 0


def cmd_train(argv: list[str]) -> int:
    p = config_parser("atlasva train", "SFT warm start + RL (PPO/GRPO) with the memory.",
                      "trainer.steps=50 memory.enable=false")
    from atlasva.runs import format_summary
    from atlasva.train import TrainConfig, Trainer

    loaded = load_command_config(TrainConfig, p.parse_args(argv))
    if loaded is None:
        return 0
    cfg, name = loaded
    if cfg.engine == "verl":  # verl's distributed trainer on the same envs, formats, memory and estimators
        from atlasva.integrations.verl.launch import train_with_verl

        cfg.validate()
        out = train_with_verl(cfg, name)
        print(f"run folder: {out['run_dir']}")
        return 0
    summary = Trainer(cfg, name).train()
    print(format_summary(summary))
    print(f"wall time {summary['wall_time_s']:.1f}s; run folder: {summary['run_dir']}")
    return 0


def cmd_eval(argv: list[str]) -> int:
    from atlasva.eval.run_eval import EvalConfig, run_eval
    from atlasva.runs import format_summary

    p = config_parser("atlasva eval", "Evaluate a checkpoint or a served model on held-out levels.",
                      "episodes=50 env.spec=sokoban")
    p.add_argument("--checkpoint", default=None, help="a Hugging Face folder (e.g. RUN/policy)")
    p.add_argument("--backend", choices=("hf", "vllm", "openai"), default=None)
    p.add_argument("--model", default=None, help="model name on the OpenAI-compatible server")
    p.add_argument("--base-url", default=None, help="e.g. http://127.0.0.1:8000/v1")
    args = p.parse_args(argv)
    extra = [f"{key}={value}" for key, value in (
        ("policy.model.path", args.checkpoint), ("policy.backend", args.backend),
        ("policy.openai.model", args.model), ("policy.openai.base_url", args.base_url)) if value]
    loaded = load_command_config(EvalConfig, args, extra)
    if loaded is None:
        return 0
    summary = run_eval(*loaded)
    print(format_summary(summary))
    print(f"run folder: {summary['run_dir']}")
    return 0


def cmd_inspect(argv: list[str]) -> int:
    from atlasva.eval.inspect import inspect_main

    return inspect_main(argv)


def cmd_vla(argv: list[str]) -> int:
    from atlasva.vla.cli import vla_main

    return vla_main(argv)


def cmd_serve(argv: list[str]) -> int:
    try:
        from atlasva.serve.server import serve_main
    except ImportError as exc:  # the serve extra is optional
        raise SystemExit(f"error: `atlasva serve` needs the serve extra (pip install 'atlasva[serve]'): {exc}") from None
    return serve_main(argv)


# --------------------------------------------------------------------------- main

COMMANDS: dict[str, tuple[str, Callable[[list[str]], int]]] = {
    "envs": ("list, show and play environments", cmd_envs),
    "baselines": ("evaluate solver and random agents on held-out levels", cmd_baselines),
    "train": ("train a policy: SFT warm start + RL with the memory", cmd_train),
    "eval": ("evaluate a checkpoint or an OpenAI-compatible served model on held-out levels", cmd_eval),
    "inspect": ("token-level view of a training episode: masks, turn ends, advantages", cmd_inspect),
    "serve": ("run the HTTP environment service", cmd_serve),
    "vla": ("AtlasVLA: collect demos, train, evaluate closed-loop (Meta-World)", cmd_vla),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"atlasva {__version__}\n\nusage: atlasva [--debug] <command> [args]\n\ncommands:")
        for name, (help_, _) in COMMANDS.items():
            print(f"  {name:<11} {help_}")
        return 0
    if argv[0] == "--version":
        print(__version__)
        return 0
    debug = os.environ.get("ATLASVA_DEBUG", "") not in ("", "0") or "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv:
        return main([])
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        import difflib

        near = difflib.get_close_matches(cmd, COMMANDS, n=1)
        print(f"error: unknown command {cmd!r}" + (f" (did you mean {near[0]!r}?)" if near else "")
              + f"; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    from atlasva.config import ConfigError

    try:
        return int(COMMANDS[cmd][1](rest) or 0)
    except BrokenPipeError:  # output piped into `head` and friends
        return 0
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        if debug:
            raise  # the whole traceback, for a bug report
        kind = "config error" if isinstance(exc, ConfigError) else "error"
        print(f"{kind}: {exc}\n(run with --debug or ATLASVA_DEBUG=1 for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

