"""``rexomni grpo``: GRPO from a YAML config, any field overridable by a flag.

    rexomni grpo --config grpo/configs/tiny.yaml --model_name_or_path runs/tiny --output_dir runs/tiny-grpo
    rexomni grpo --config grpo/configs/qwen2.5-vl-3b.yaml --dry-run
    rexomni grpo --help                   # every field, with its help and default
    torchrun --nproc_per_node 8 -m rexomni.grpo.cli --config grpo/configs/qwen2.5-vl-3b.yaml
"""

from __future__ import annotations

import argparse
import sys

from rexomni.sft.cli import run_command
from rexomni.sft.config import ConfigParser

from .config import grpo_parser


def build_parser() -> ConfigParser:
    parser = grpo_parser()
    parser.add_argument("--dry-run", "--dry_run", action="store_true",
                        help="Print the plan (world size, prompts and rollouts per step, sampling, loss, rewards, "
                             "learning rates, parameter counts of the model built on the meta device) and exit.")
    parser.add_argument("--model", dest="model_name_or_path", metavar="CHECKPOINT", default=argparse.SUPPRESS,
                        help="Short for --model_name_or_path.")
    return parser


def _recipe():
    from .trainer import plan, run_grpo

    return plan, run_grpo


def main(argv: list[str] | None = None) -> int:
    return run_command("grpo", build_parser(), _recipe, argv)


if __name__ == "__main__":
    sys.exit(main())
