"""Score saved checkpoints on a training config's held-out sets, as training itself scores them.

    python bench/score_heldout.py CONFIG.yaml CHECKPOINT [CHECKPOINT ...] [--threads 1]

The sets are the ones ``rexomni sft --config CONFIG.yaml`` scores every ``eval_steps`` (same mixture,
same seed, ``eval_examples`` per task; a GRPO config's are the ones ``rexomni grpo`` scores), asked and scored by
today's scorer (``rexomni.sft.heldout``).
This puts runs logged under different scorers, or from different configs, on one scale: docs/recipe.md
re-scored its stage-2 runs this way.
"""

from __future__ import annotations

import argparse

COLUMNS = (("referring", "ref/acc@0.5"), ("referring", "f1@0.5"), ("grounding", "f1@0.5"),
           ("grounding", "f1@mean"), ("pointing", "point/f1"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", help="an SFT or GRPO config (YAML) whose held-out sets to score on")
    parser.add_argument("checkpoints", nargs="+", help="checkpoint folders (or short names such as rexomni-synth)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    args = parser.parse_args()

    import torch
    from rexomni.sft.config import read_yaml
    from rexomni.sft.heldout import evaluate_heldout, heldout_sets
    from rexomni.sft.trainer import build_mixture

    from rexomni.api import RexOmni

    torch.set_num_threads(args.threads)
    if "reward_weights" in read_yaml(args.config):
        from rexomni.grpo.config import load_config
    else:
        from rexomni.sft.config import load_config
    config = load_config(args.config)
    sets = heldout_sets(build_mixture(config), config.eval_examples)
    print("| checkpoint | " + " | ".join(f"{task} {metric}" for task, metric in COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for path in args.checkpoints:
        detector = RexOmni.from_pretrained(path, device="cpu")
        scores = evaluate_heldout(detector.model, detector.processor, detector.settings, sets,
                                  config.eval_batch_size, config.eval_max_new_tokens)
        cells = [f"{scores[key]:.3f}" if key in scores else "" for key in (f"{t}/{m}" for t, m in COLUMNS)]
        print(f"| {path} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
