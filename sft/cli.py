"""``rexomni sft``: supervised fine-tuning from a YAML config, any field overridable by a flag.

    rexomni sft --config sft/configs/tiny.yaml
    rexomni sft --config sft/configs/tiny.yaml --max_steps 50 --output_dir runs/tiny
    rexomni sft --config sft/configs/qwen2.5-vl-3b.yaml --dry-run
    rexomni sft --help                    # every field, with its help and default
    torchrun --nproc_per_node 8 -m rexomni.sft.cli --config sft/configs/qwen2.5-vl-3b.yaml
"""

from __future__ import annotations

import json
import logging
import sys

from .config import ConfigParser, parse_args, sft_parser


def build_parser() -> ConfigParser:
    parser = sft_parser()
    parser.add_argument("--dry-run", "--dry_run", action="store_true",
                        help="Print the plan (world size, batches, steps, tokens per step, what is frozen, parameter "
                             "counts of the model built on the meta device) and exit.")
    return parser


def run_command(name: str, parser: ConfigParser, load_recipe, argv: list[str] | None = None) -> int:
    """What ``rexomni sft`` and ``rexomni grpo`` share: ``--help`` lists every field; a bad config is one
    line on stderr (exit 2); ``--dry-run`` prints the plan; else train and print the final metrics.
    ``load_recipe()`` returns the recipe's ``(plan, run)`` (imported late: ``--help`` stays fast)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or "-h" in argv or "--help" in argv:
        print(parser.format_help())
        return 0
    # Before the config: building it sets up the devices (TrainingArguments), which logs.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config, rest = parse_args(parser, argv)
    except (OSError, ValueError, TypeError) as e:
        print(f"rexomni {name}: {e}", file=sys.stderr)
        return 2
    plan, run = load_recipe()
    if rest.dry_run:
        print(plan(config))
        return 0
    try:
        result = run(config)
    finally:
        _end_process_group()
    print(json.dumps({"output_dir": result["output_dir"], "global_step": result["global_step"],
                      "train": result["train"], "heldout": result["heldout"][-1:]}, default=float))
    return 0


def _end_process_group() -> None:
    """Close a distributed run's process group before the interpreter exits: left to the exit, its threads
    can be torn down under it and abort a rank that has already finished ("terminate called without an
    active exception"), failing the launcher. The finished trainer is collected first: its DDP reducer sits
    in reference cycles, and freed only at exit it would release gloo work and tensors without a live
    interpreter; the likely cause of the same abort, seen twice in one CI run after the group was destroyed."""
    import gc

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def _recipe():
    from .trainer import plan, run_sft

    return plan, run_sft


def main(argv: list[str] | None = None) -> int:
    return run_command("sft", build_parser(), _recipe, argv)


if __name__ == "__main__":
    sys.exit(main())
