"""``rexomni sft``: supervised fine-tuning from a YAML config, any field overridable by a flag.

    rexomni sft --config sft/configs/tiny.yaml
    rexomni sft --config sft/configs/tiny.yaml --max_steps 50 --output_dir runs/tiny
    rexomni sft --config sft/configs/qwen2.5-vl-3b.yaml --dry-run
    torchrun --nproc_per_node 8 -m rexomni.sft.cli --config sft/configs/qwen2.5-vl-3b.yaml
"""

from __future__ import annotations

import json
import logging
import sys

USAGE = """usage: rexomni sft --config CONFIG.yaml [--dry-run] [--FIELD VALUE ...]

Supervised fine-tuning. Every field of the config (sft/config.py) is also a flag and overrides
the YAML, e.g. --max_steps 50 --output_dir runs/x --lora_r 16 --deepspeed sft/configs/ds_zero2.json
--resume_from_checkpoint auto.

  --config PATH   the run's YAML (sft/configs/tiny.yaml, qwen2.5-vl-3b.yaml, rexomni-3b-lora.yaml)
  --dry-run       print the plan (world size, batches, steps, tokens per step, what is frozen,
                  parameter counts from the model on the meta device) and exit
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    config_path, dry_run, rest = None, False, []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config" and i + 1 < len(argv):
            config_path, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--config="):
            config_path = arg.split("=", 1)[1]
        elif arg in ("--dry-run", "--dry_run"):
            dry_run = True
        elif arg.startswith(("--local_rank", "--local-rank")):
            # The DeepSpeed launcher appends --local_rank=N; LOCAL_RANK in the environment says the same.
            i += 1 if "=" in arg else 2
            continue
        else:
            rest.append(arg)
        i += 1
    if config_path is None:
        print("rexomni sft: --config is required\n\n" + USAGE, file=sys.stderr)
        return 2

    from .config import load_config

    try:
        config = load_config(config_path, rest)
    except (OSError, ValueError, TypeError) as e:
        print(f"rexomni sft: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .trainer import plan, run_sft

    if dry_run:
        print(plan(config))
        return 0
    result = run_sft(config)
    print(json.dumps({"output_dir": result["output_dir"], "global_step": result["global_step"],
                      "train": result["train"], "heldout": result["heldout"][-1:] }, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
