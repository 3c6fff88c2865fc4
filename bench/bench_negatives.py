"""The cost of negative scoring (NNC suppression, OOD scores) as a ratio of plain ``detect`` time.

The shipped model detects held-out synthetic scenes (the negatives benchmark's distractor split) in
the same process, mode after mode, for several rounds; each mode's time is the median over rounds.

    OMP_NUM_THREADS=1 python bench/bench_negatives.py            # 32 scenes, batch 8, 3 rounds

Modes, all on the same images and categories:
- plain: ``detect(images, categories)``, the baseline;
- suppress: ``negatives="auto", negatives_in_prompt=False, suppress=True``: the same prompts and answers
  as plain, then every box scored under its phrase and each look-alike: the cost of NNC alone;
- suppress+ood: the same plus ``ood=True`` (every box also scored under every asked category);
- negatives: the look-alikes in the prompt (longer prompts; the answers can differ);
- negatives+suppress: in the prompt, and NNC.
"""

from __future__ import annotations

import argparse
import statistics
import time

from rexomni.data_engines.synth import generate_scene

from rexomni.api import RexOmni

SCORING_ONLY = {"negatives": "auto", "negatives_in_prompt": False}
MODES = {
    "plain": {},
    "suppress": {**SCORING_ONLY, "suppress": True},
    "suppress+ood": {**SCORING_ONLY, "suppress": True, "ood": True},
    "negatives": {"negatives": "auto"},
    "negatives+suppress": {"negatives": "auto", "suppress": True},
}


def scenes(n: int, seed: int = 20261215):
    """Held-out scenes as the benchmark draws them: one to four shapes, hard distractors."""
    out = []
    for i in range(n):
        image, sample = generate_scene(seed * 1_000_003 + i, 224, "single", sizes=["medium", "large"],
                                       num_objects=(1, 4), distractors=True, masks=False)
        out.append((image, sorted(sample["categories"])))
    return out


def run(model: RexOmni, data, batch_size: int, options: dict) -> tuple[float, int]:
    """Seconds for every scene (batched, each image with its own categories), and boxes returned."""
    start = time.perf_counter()
    results = model.detect([image for image, _ in data], [categories for _, categories in data],
                           batch_size=batch_size, **options)
    return time.perf_counter() - start, sum(len(r) for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=32, help="scenes")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    model = RexOmni.from_pretrained(device="cpu")
    data = scenes(args.n)
    run(model, data[:2], args.batch_size, MODES["suppress+ood"])  # warm-up
    times: dict[str, list[float]] = {m: [] for m in MODES}
    boxes: dict[str, int] = {}
    for _ in range(args.rounds):
        for mode, options in MODES.items():
            seconds, boxes[mode] = run(model, data, args.batch_size, options)
            times[mode].append(seconds)
    median = {m: statistics.median(t) for m, t in times.items()}
    print(f"{args.n} scenes, {args.rounds} rounds, median seconds per mode (shipped model, CPU)")
    print(f"{'mode':<20}{'seconds':>9}{'boxes':>7}{'x plain':>9}")
    for mode in MODES:
        print(f"{mode:<20}{median[mode]:>9.2f}{boxes[mode]:>7}{median[mode] / median['plain']:>9.2f}")


if __name__ == "__main__":
    main()
