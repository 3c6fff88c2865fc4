"""``rexomni demo train``: train your own detector from random weights on a CPU in about ten minutes.

    rexomni demo train [--minutes 10] [--out runs/demo]

It runs stage 1 of the default model's recipe (``sft/configs/synth-stage1.yaml``: one shape per
224-px scene, 8 kinds x 11 colours) for a time budget, and writes to ``--out``:

- ``before/`` and ``after/``: the example scenes (``examples/``) drawn with what the random model and
  the trained one answer;
- ``loss.png``: the training loss per step;
- the checkpoint itself (``rexomni detect IMG --model OUT``) and its held-out scores.

Ten minutes is 2,000-3,000 steps here: the answers are well formed and the loss has fallen from
about 4 to 1.3, but the boxes are only starting to find the shapes (held-out F1@0.5 0.01 after 2,301
steps on one thread beside a training run; run 4 of docs/recipe.md, on the preset's earlier
positions: 0.03 at 3,000 steps, 0.59 at 5,000, 1.00 at 8,000, where ``--minutes 30`` showed it
localise). The shipped default model was trained by the same recipe (rexomni/default_model/README.md).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

from rexomni.cli import build_parser

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGE1 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "synth-stage1.yaml")
EXAMPLES = os.path.join(REPO, "examples")
EXAMPLE_CATEGORIES = ["red circle", "blue square", "yellow star", "green triangle"]


def _parser() -> argparse.ArgumentParser:
    parser = build_parser("demo", "Train a small detector from random weights and show what it learned.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="stage 1 of the default model's recipe for a time budget",
                           formatter_class=parser.formatter_class)
    train.add_argument("--minutes", type=float, default=10.0, help="training time budget")
    train.add_argument("--out", default="runs/demo", help="output folder")
    train.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    return parser


def draw_examples(detector, folder: str) -> list:
    """Detect the example categories in the example scenes and save the drawings in ``folder``."""
    from rexomni.draw import draw_result

    os.makedirs(folder, exist_ok=True)
    paths = sorted(glob.glob(os.path.join(EXAMPLES, "*.png")))
    results = detector.detect(paths, EXAMPLE_CATEGORIES, max_new_tokens=60)
    for path, result in zip(paths, results):
        draw_result(path, result).save(os.path.join(folder, os.path.basename(path)))
    return results


def plot_loss(log_history: list[dict], path: str) -> None:
    """The training loss per logged step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = [h for h in log_history if "loss" in h]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([h["step"] for h in history], [h["loss"] for h in history], marker="." if len(history) < 20 else None)
    ax.set(xlabel="step", ylabel="loss per answer token", title="rexomni demo train")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def train(args) -> int:
    import torch

    from rexomni.api import RexOmni

    from .config import load_config
    from .trainer import run_sft

    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = os.path.join(args.out, "model")
    config = load_config(STAGE1, {"output_dir": model_dir, "max_steps": 1_000_000, "max_train_minutes": args.minutes,
                                  "eval_steps": 0, "save_steps": 500, "resume_from_checkpoint": None})
    from .model_setup import load_model

    bundle = load_model(config.model_args, seed=config.seed)
    draw_examples(RexOmni(bundle.model.eval(), bundle.processor, bundle.settings), os.path.join(args.out, "before"))
    result = run_sft(config)
    plot_loss(result["log_history"], os.path.join(args.out, "loss.png"))
    draw_examples(RexOmni.from_pretrained(model_dir, device="cpu"), os.path.join(args.out, "after"))
    scores = result["heldout"][-1] if result["heldout"] else {}
    print(json.dumps({"steps": result["global_step"], **{k: round(v, 3) for k, v in scores.items() if k != "step"}}))
    print(f"rexomni demo: model {model_dir}, loss curve {args.out}/loss.png, drawings {args.out}/before and "
          f"{args.out}/after", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return {"train": train}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
