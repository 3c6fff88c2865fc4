"""``rexomni grpo``: GRPO from a YAML config, any field overridable by a flag.

    rexomni grpo --config grpo/configs/tiny.yaml --model_name_or_path runs/tiny --output_dir runs/tiny-grpo
    rexomni grpo --config grpo/configs/qwen2.5-vl-3b.yaml --dry-run
    rexomni grpo --help                   # every field, with its help and default
    torchrun --nproc_per_node 8 -m rexomni.grpo.cli --config grpo/configs/qwen2.5-vl-3b.yaml
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from rexomni.sft.config import ConfigParser

from .config import grpo_parser, parse_grpo_args


def build_parser() -> ConfigParser:
    parser = grpo_parser()
    parser.add_argument("--dry-run", "--dry_run", action="store_true",
                        help="Print the plan (world size, prompts and rollouts per step, sampling, loss, rewards, "
                             "learning rates, parameter counts of the model built on the meta device) and exit.")
    parser.add_argument("--model", dest="model_name_or_path", metavar="CHECKPOINT", default=argparse.SUPPRESS,
                        help="Short for --model_name_or_path.")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or "-h" in argv or "--help" in argv:
        print(parser.format_help())
        return 0
    # Before the config: building it sets up the devices (TrainingArguments), which logs.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config, rest = parse_grpo_args(parser, argv)
    except (OSError, ValueError, TypeError) as e:
        print(f"rexomni grpo: {e}", file=sys.stderr)
        return 2
    from .trainer import plan, run_grpo

    if rest.dry_run:
        print(plan(config))
        return 0
    result = run_grpo(config)
    print(json.dumps({"output_dir": result["output_dir"], "global_step": result["global_step"],
                      "train": result["train"], "heldout": result["heldout"][-1:]}, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
