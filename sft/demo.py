"""``rexomni demo train``: train your own detector from random weights on a CPU in about ten minutes.

    rexomni demo train [--minutes 10] [--warmup-minutes 3] [--out runs/demo]

It runs the start of the default model's recipe for a time budget: the recognition warm-up
(``sft/configs/synth-warmup.yaml``: the random vision tower learns to name the shape at each image
token) for ``--warmup-minutes``, then stage 1 (``sft/configs/synth-stage1.yaml``: one shape per
224-px scene, 8 kinds x 11 colours, the prompt naming it) from the warmed tower for the rest. It
writes to ``--out``:

- ``before/`` and ``after/``: six scenes of stage 1's kind that training never draws, each asked for
  its shape by name, drawn with what the random model and the trained one answer;
- ``loss.png``: stage 1's training loss per step;
- ``warmup/`` (the warmed model) and ``model/``, the detector itself (``rexomni detect IMG --model
  OUT/model``), whose held-out scores are printed at the end.

Why the warm-up: from random weights stage 1 needs about 5,000 steps before its boxes find the
shapes (docs/recipe.md run 4); from a warmed tower on today's positions, 1,000-2,000 (run 18).
The shipped default model was trained by the longer recipe of rexomni/default_model/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys

from rexomni.cli import build_parser

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
WARMUP, STAGE1 = (os.path.join(CONFIGS, name) for name in ("synth-warmup.yaml", "synth-stage1.yaml"))


def _parser() -> argparse.ArgumentParser:
    parser = build_parser("demo", "Train a small detector from random weights and show what it learned.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="the warm-up and stage 1 of the default model's recipe for a time budget",
                           formatter_class=parser.formatter_class)
    train.add_argument("--minutes", type=float, default=10.0, help="training time budget, warm-up included")
    train.add_argument("--warmup-minutes", type=float, default=3.0,
                       help="of --minutes, spent warming the vision tower up before stage 1 (0: none)")
    train.add_argument("--out", default="runs/demo", help="output folder")
    train.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    return parser


def draw_scenes(detector, folder: str) -> None:
    """Ask ``detector`` for the shape of each demo scene by its name; save the drawings in ``folder``."""
    from rexomni.draw import draw_result

    os.makedirs(folder, exist_ok=True)
    for index, (image, phrase) in enumerate(demo_scenes(), start=1):
        result = detector.detect(image, [phrase], max_new_tokens=40)
        draw_result(image, result).save(os.path.join(folder, f"scene{index}.png"))


def demo_scenes(count: int = 6) -> list:
    """Scenes of stage 1's family, drawn from seeds its training never uses: (image, the shape's name)."""
    from rexomni.data_engines.synth import generate_scene

    scenes = []
    for index in range(count):
        image, sample = generate_scene(random.Random(f"demo-scene:{index}"), 224, "single", sizes=["medium", "large"],
                                       num_objects=(1, 1), granularity="color kind", masks=False)
        scenes.append((image, sample["objects"][0]["phrase"]))
    return scenes


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

    from .config import load_config, read_config
    from .model_setup import load_model
    from .recognition import run_warmup, warmup_parser
    from .trainer import run_sft

    if not 0 <= args.warmup_minutes < args.minutes:
        raise SystemExit(f"rexomni demo: --warmup-minutes must be at least 0 and less than --minutes "
                         f"({args.minutes:g}), got {args.warmup_minutes:g}")
    if args.threads:
        torch.set_num_threads(args.threads)
    fresh = {"max_steps": 1_000_000, "save_steps": 500, "resume_from_checkpoint": None}
    model_dir, warm_dir = os.path.join(args.out, "model"), os.path.join(args.out, "warmup")
    stage1 = {**fresh, "output_dir": model_dir, "max_train_minutes": args.minutes - args.warmup_minutes,
              "eval_steps": 0}
    warmup = None
    if args.warmup_minutes:
        warmup = read_config(warmup_parser(), WARMUP, {
            **fresh, "model_name_or_path": None, "preset": "tiny", "output_dir": warm_dir,
            "max_train_minutes": args.warmup_minutes, "eval_scenes": 128, "eval_steps": 0})
        stage1.update(model_name_or_path=warm_dir, preset=None)
    config = load_config(STAGE1, stage1)
    first = warmup or config
    start = load_model(first.model_args, seed=first.seed)  # what the first stage builds from this seed
    draw_scenes(RexOmni(start.model.eval(), start.processor, start.settings), os.path.join(args.out, "before"))
    if warmup:
        warm = run_warmup(warmup)
        print(json.dumps({"warmup_steps": warm["global_step"], **_rounded(warm["heldout"])}))
    result = run_sft(config)
    plot_loss(result["log_history"], os.path.join(args.out, "loss.png"))
    draw_scenes(RexOmni.from_pretrained(model_dir, device="cpu"), os.path.join(args.out, "after"))
    print(json.dumps({"steps": result["global_step"], **_rounded(result["heldout"])}))
    print(f"rexomni demo: model {model_dir}, loss curve {args.out}/loss.png, drawings {args.out}/before and "
          f"{args.out}/after", file=sys.stderr)
    return 0


def _rounded(history: list[dict]) -> dict:
    """The last held-out scores of a run, rounded for printing."""
    last = history[-1] if history else {}
    return {key: round(value, 3) for key, value in last.items() if key != "step"}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return {"train": train}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
