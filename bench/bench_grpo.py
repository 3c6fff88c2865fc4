"""Does GRPO improve an SFT checkpoint of the tiny preset, and what does the grammar constraint cost in rollouts?

    source .venv/bin/activate
    python bench/bench_grpo.py --steps 60 --heldout 64 --threads 1             # tiny.yaml's recipe, 60 steps
    python bench/bench_grpo.py --steps 60 --heldout 64 --threads 1 --variants tiny shaped
    python bench/bench_grpo.py --minutes 5 --objects 1 2 --threads 1          # a time budget; 1-2 shapes a scene

1. Loads the SFT checkpoint (--sft, default the shipped model rexomni/default_model) with
   ``RexOmni.from_pretrained``.
2. BEFORE: scores it on held-out scenes through the eval path (``evaluate_samples`` with a ``synth:`` DatasetSpec,
   --heldout scenes, seed --heldout-seed, which training never draws): the referring task the checkpoint was
   trained on (each present phrase asked), greedy and grammar-constrained as ``rexomni eval`` decodes, metrics
   ``f1`` and ``coco`` (COCO AP ranked by the model's scores), plus the duplicate rate (boxes with IoU > 0.9 with
   an earlier box of their phrase, ``eval.visual_prompt.duplicates``, over all boxes).
3. Rollout throughput: completions per second of ``RexOmni.predict(..., do_sample=True, temperature=1.0)`` under
   the answer grammar and without it (``constrained=False``), the same --rollouts prompts each, alternated
   --repeats times in this process; the best time of each is kept, and their ratio printed.
4. For each --variants entry: GRPO (``run_grpo``) from the checkpoint with grpo/configs/tiny.yaml plus the
   variant's overrides, on the checkpoint's own scene family (--objects shapes per scene), for --steps steps or
   --minutes of training, into --out/<variant>; then AFTER on the same held-out scenes, and the deltas.

Two CPU cores shared with another training job give noisy timings: --threads 1 keeps this run to one.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

import numpy as np

from rexomni.checkpoint import DEFAULT_MODEL_DIR

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CONFIG = os.path.join(ROOT, "grpo", "configs", "tiny.yaml")
MAX_NEW_TOKENS = 40  # tiny.yaml's max_completion_length: a referring answer of three boxes is about 30 tokens

# Changes to tiny.yaml's recipe, compared at equal steps. Every variant trains on the same prompts (same seeds).
VARIANTS = {
    "tiny": {},
    "shaped": {"reward_options": {"giou_shaping": 0.2}},      # near misses graded by GIoU instead of all scoring 0
    "iou": {"reward_options": {"iou_weight": 0.8}},           # the matched boxes' IoU counts more than F1
    "lr3e-5": {"learning_rate": 3e-5, "merger_learning_rate": 3e-5, "vision_learning_rate": 3e-5},
    "g8": {"num_generations": 8, "per_device_train_batch_size": 16},  # 2 prompts x 8 rollouts a step
    "beta0": {"beta": 0.0},                                   # no KL to the SFT start (no reference model)
}
ROWS = [("F1@0.5", "f1@0.5"), ("F1@mean", "f1@mean"), ("mean IoU", "mean_iou"), ("COCO AP", "coco/AP"),
        ("AP50", "coco/AP50"), ("duplicate rate", "duplicate_rate"), ("boxes / answer", "boxes_per_answer"),
        ("parsed clean", "parsed_clean")]


# --------------------------------------------------------------------------- data


def scene_options(objects: list[int]) -> dict:
    """The scene family of the default checkpoint's stage 1 (sft/configs/synth-stage1.yaml), ``objects`` shapes each."""
    return {"mode": "single", "size": 224, "sizes": ["medium", "large"], "num_objects": list(objects), "masks": False}


def heldout_spec(objects: list[int], n: int, seed: int):
    from rexomni.eval.runner import DatasetSpec

    synth = {**scene_options(objects), "n": n, "seed": seed}
    return DatasetSpec(name="heldout", task="referring", ask="present", metrics=["f1", "coco"], synth=synth,
                       predict={"max_new_tokens": MAX_NEW_TOKENS})


def grpo_overrides(args, variant: str) -> dict:
    """tiny.yaml + the checkpoint, the scene family, the budget and the variant's changes."""
    data = {"seed": 1, "codec": "center", "paraphrase": False,
            "sources": [{"name": "scenes", "synth": scene_options(args.objects), "tasks": {"referring": 1}}]}
    steps = args.steps if args.steps else 1_000_000
    return {"model_name_or_path": args.sft, "data": data, "output_dir": os.path.join(args.out, variant),
            "max_steps": steps, "eval_examples": 0,
            "save_steps": 1_000_000, "logging_steps": max(1, min(10, steps // 6)), "report_to": "none",
            "disable_tqdm": True, "seed": args.seed, **({} if args.steps else {"train_examples": 100_000}),
            **VARIANTS[variant]}


# --------------------------------------------------------------------------- scoring


def evaluate(model, spec, batch_size: int) -> dict[str, float]:
    """Held-out scores of ``model`` through the eval path, plus the duplicate rate and boxes per answer."""
    from rexomni.eval.runner import PredictionCache, evaluate_samples, synth_samples

    cache = PredictionCache()
    metrics, _ = evaluate_samples(model, synth_samples(spec.synth), spec, batch_size=batch_size, cache=cache,
                                  progress=False)
    return {**metrics, **duplicate_stats(cache.predictions().values())}


def duplicate_stats(predictions) -> dict[str, float]:
    """Share of boxes repeating an earlier box of their phrase (IoU > DUPLICATE_IOU) within an answer."""
    from rexomni.eval.visual_prompt import DUPLICATE_IOU, duplicates

    boxes = repeated = answers = 0
    for prediction in predictions:
        answers += 1
        labels = np.asarray(prediction.labels, dtype=object)
        for phrase in set(prediction.labels):
            repeated += duplicates(np.asarray(prediction.boxes)[labels == phrase], DUPLICATE_IOU)[1]
        boxes += len(prediction.boxes)
    return {"duplicate_rate": repeated / boxes if boxes else 0.0, "boxes_per_answer": boxes / max(answers, 1)}


# --------------------------------------------------------------------------- rollout throughput


def rollout_prompts(objects: list[int], n: int, seed: int) -> tuple[list, list[list[str]]]:
    from rexomni.eval.runner import synth_samples

    samples = synth_samples({**scene_options(objects), "n": n, "seed": seed})
    return [s["image"] for s in samples], [sorted({o["phrase"] for o in s["objects"]}) for s in samples]


def time_rollouts(model, images, phrases, constrained: bool, batch_size: int) -> tuple[float, int]:
    """(seconds, generated tokens) of one sampled completion per prompt."""
    start = time.perf_counter()
    results = model.predict(images, task="referring", categories=phrases, constrained=constrained,
                            max_new_tokens=MAX_NEW_TOKENS, batch_size=batch_size, do_sample=True, temperature=1.0)
    return time.perf_counter() - start, sum(r.num_generated_tokens for r in results)


def rollout_throughput(model, args) -> dict[str, dict[str, float]]:
    """Best of --repeats alternated timings, with and without the grammar, on the same prompts."""
    import torch

    images, phrases = rollout_prompts(args.objects, args.rollouts, args.heldout_seed + 1)
    time_rollouts(model, images[:2], phrases[:2], True, 2)  # warm-up
    best: dict[str, tuple[float, int]] = {}
    for repeat in range(args.repeats):
        for name, constrained in (("constrained", True), ("unconstrained", False)):
            torch.manual_seed(repeat)
            seconds, tokens = time_rollouts(model, images, phrases, constrained, args.batch_size)
            if name not in best or seconds < best[name][0]:
                best[name] = (seconds, tokens)
    return {name: {"completions_per_s": args.rollouts / s, "tokens_per_s": t / s, "tokens_per_completion":
                   t / args.rollouts} for name, (s, t) in best.items()}


# --------------------------------------------------------------------------- GRPO


@contextlib.contextmanager
def time_limit(minutes: float | None):
    """Within the block, ``run_grpo`` stops after ``minutes`` of training (SFT's TimeLimitCallback)."""
    from rexomni.grpo import trainer as grpo_trainer
    from rexomni.sft.trainer import TimeLimitCallback

    if not minutes:
        yield
        return
    build = grpo_trainer.build_trainer

    def build_with_limit(config):
        trainer = build(config)
        trainer.add_callback(TimeLimitCallback(minutes))
        return trainer

    grpo_trainer.build_trainer = build_with_limit
    try:
        yield
    finally:
        grpo_trainer.build_trainer = build


def train(args, variant: str) -> dict:
    """GRPO for ``variant``; returns steps, wall time and the first and last logged rewards."""
    from rexomni.grpo.config import load_config
    from rexomni.grpo.trainer import run_grpo

    config = load_config(CONFIG, grpo_overrides(args, variant))
    start = time.perf_counter()
    with time_limit(args.minutes if not args.steps else None):
        result = run_grpo(config)
    logged = [h for h in result["log_history"] if "reward" in h]
    return {"steps": result["global_step"], "wall_s": time.perf_counter() - start,
            "reward_first": logged[0]["reward"] if logged else float("nan"),
            "reward_last": logged[-1]["reward"] if logged else float("nan"), "output_dir": result["output_dir"]}


# --------------------------------------------------------------------------- report


def print_table(before: dict, after: dict[str, dict]) -> None:
    names = list(after)
    header = f"{'metric':<16} {'before':>8}" + "".join(f" {n:>10} {'delta':>8}" for n in names)
    print(header + "\n" + "-" * len(header))
    for label, key in ROWS:
        line = f"{label:<16} {before.get(key, float('nan')):>8.3f}"
        for n in names:
            value = after[n].get(key, float("nan"))
            line += f" {value:>10.3f} {value - before.get(key, float('nan')):>+8.3f}"
        print(line)


def print_throughput(speed: dict, rollouts: int) -> None:
    print(f"\nrollouts: {rollouts} sampled completions (temperature 1.0), best of the repeats")
    for name, row in speed.items():
        print(f"  {name:<14} {row['completions_per_s']:>7.1f} completions/s {row['tokens_per_s']:>8.1f} tokens/s "
              f"{row['tokens_per_completion']:>6.1f} tokens/completion")
    ratio = speed["constrained"]["completions_per_s"] / speed["unconstrained"]["completions_per_s"]
    print(f"  constrained / unconstrained completions per second: {ratio:.2f}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sft", default=DEFAULT_MODEL_DIR, help="the SFT checkpoint GRPO starts from (default: the "
                        "shipped model)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=None, help="GRPO steps per variant (60 when no budget is given)")
    budget.add_argument("--minutes", type=float, default=None, help="GRPO training minutes per variant, not steps")
    parser.add_argument("--variants", nargs="+", default=["tiny"], choices=list(VARIANTS),
                        help="GRPO recipes: tiny.yaml as is, or with one change (see VARIANTS); each is scored")
    parser.add_argument("--objects", type=int, nargs=2, default=[1, 1], metavar=("MIN", "MAX"),
                        help="shapes per scene, in training and held-out scenes (stage1 was trained on 1 1)")
    parser.add_argument("--heldout", type=int, default=128, help="held-out scenes scored before and after")
    parser.add_argument("--heldout-seed", type=int, default=20261202, help="seed of the held-out scenes")
    parser.add_argument("--rollouts", type=int, default=64, help="prompts of the rollout throughput measure")
    parser.add_argument("--repeats", type=int, default=2, help="alternated timings per setting; the best is kept")
    parser.add_argument("--batch-size", type=int, default=16, help="batch size of the held-out and rollout generation")
    parser.add_argument("--seed", type=int, default=0, help="GRPO seed (its training prompts and sampling)")
    parser.add_argument("--out", default="runs/bench_grpo", help="GRPO output folders go under OUT/<variant>")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (1 is steadier when other jobs share the cores)")
    args = parser.parse_args()
    if not args.steps and not args.minutes:
        args.steps = 60
    return args


def main() -> None:
    args = parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from rexomni import RexOmni

    spec = heldout_spec(args.objects, args.heldout, args.heldout_seed)
    model = RexOmni.from_pretrained(args.sft, device="cpu")
    before = evaluate(model, spec, args.batch_size)
    print(f"before ({args.sft}): " + ", ".join(f"{k} {before.get(v, float('nan')):.3f}" for k, v in ROWS), flush=True)
    speed = rollout_throughput(model, args)
    print_throughput(speed, args.rollouts)
    after, runs = {}, {}
    for variant in args.variants:
        runs[variant] = train(args, variant)
        after[variant] = evaluate(RexOmni.from_pretrained(runs[variant]["output_dir"], device="cpu"), spec,
                                  args.batch_size)
        run = runs[variant]
        print(f"\n{variant}: {run['steps']} steps in {run['wall_s']:.0f} s, reward {run['reward_first']:.3f} (first "
              f"log) -> {run['reward_last']:.3f} (last log)", flush=True)
    budget = f"{args.steps} steps" if args.steps else f"{args.minutes:g} min"
    print(f"\nGRPO from {args.sft}, {budget} per variant, {args.objects[0]}-{args.objects[1]} shapes per scene; "
          f"{args.heldout} held-out scenes (seed {args.heldout_seed}), referring, greedy, constrained")
    print_table(before, after)


if __name__ == "__main__":
    main()
