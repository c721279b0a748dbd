"""``atlasva vla {collect,segment,train,worldmodel,posttrain,eval} CONFIG [key=value ...] [--print-config]``."""

from __future__ import annotations

import argparse
import sys

from atlasva.config import ConfigError, load_config, to_yaml
from atlasva.vla.config import VLAConfig


def vla_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="atlasva vla",
        description="AtlasVLA: collect scripted demos, train with action chunking, evaluate closed loop; AtomVLA "
                    "post-training: segment demos into atomic subtasks, train a latent world model, post-train offline "
                    "with GRPO against its energies (atom.* settings).",
    )
    parser.add_argument("command", choices=["collect", "segment", "train", "worldmodel", "posttrain", "eval"])
    parser.add_argument("config", nargs="?", default=None, help="config name in configs/vla/ or a YAML path")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=100")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args = parser.parse_args(argv)
    try:
        cfg, name = load_config(VLAConfig, args.config, args.overrides, subdir="vla")
        cfg.model.geometry()  # validate the model section early
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    cfg._name = name  # type: ignore[attr-defined]

    from atlasva.vla import sim

    try:
        if args.command == "collect":
            sim.collect(cfg)
        elif args.command == "segment":
            from atlasva.vla.atom.segment_stage import segment_dataset

            segment_dataset(cfg)
        elif args.command == "train":
            sim.train(cfg)
        elif args.command == "worldmodel":
            from atlasva.vla.atom.world_model import train_world_model

            train_world_model(cfg)
        elif args.command == "posttrain":
            from atlasva.vla.atom.posttrain import posttrain

            posttrain(cfg)
        else:
            sim.evaluate(cfg)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(vla_main(sys.argv[1:]))
