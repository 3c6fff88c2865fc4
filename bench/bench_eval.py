"""Scoring speed: box F1 and COCO AP on 5,000 images with 20 boxes each.

    python bench/bench_eval.py [--images 5000] [--boxes 20] [--categories 10]

Predictions are the ground truth jittered (plus a few false positives), so matching has real work to
do. Reported: wall time for F1 at the ten IoU thresholds under each protocol (Hungarian vs greedy
matching), for COCO AP through faster-coco-eval and through pycocotools, and the ratio of the two
COCO backends measured in this same process (same data, same machine).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from rexomni.eval.coco import build_coco, coco_ap, coco_eval
from rexomni.eval.data import Prediction, assign_keys
from rexomni.eval.f1 import box_f1


def make_data(num_images: int, num_boxes: int, num_categories: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    names = [f"category {i}" for i in range(num_categories)]
    samples, preds = [], {}
    for i in range(num_images):
        xy = rng.uniform(0, 560, (num_boxes, 2))
        gt = np.c_[xy, xy + rng.uniform(8, 80, (num_boxes, 2))]
        labels = [names[j] for j in rng.integers(0, num_categories, num_boxes)]
        samples.append({"image": f"{i:06d}.jpg", "width": 640, "height": 640,
                        "objects": [{"phrase": c, "bbox": b.tolist()} for c, b in zip(labels, gt)]})
        keep = rng.uniform(size=num_boxes) < 0.9  # a tenth missed
        jitter = gt[keep] + rng.normal(0, 3, (int(keep.sum()), 4))
        extra = int(num_boxes - keep.sum())  # as many false positives as misses: 20 predictions too
        fxy = rng.uniform(0, 560, (extra, 2))
        boxes = np.r_[jitter, np.c_[fxy, fxy + 40]]
        pred_labels = [lb for lb, k in zip(labels, keep) if k]
        pred_labels += [names[j] for j in rng.integers(0, num_categories, extra)]
        preds[f"{i:06d}.jpg"] = Prediction(boxes, rng.uniform(size=len(boxes)), pred_labels)
    return assign_keys(samples), preds


class Clock:
    """Wall and CPU seconds of one call (CPU time is steadier on a shared machine)."""

    def __init__(self, wall: float, cpu: float):
        self.wall, self.cpu = wall, cpu

    def __str__(self) -> str:
        return f"{self.wall:7.2f} s wall {self.cpu:7.2f} s cpu"


def timed(fn, *args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, Clock(time.perf_counter() - wall, time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--boxes", type=int, default=20)
    parser.add_argument("--categories", type=int, default=10)
    args = parser.parse_args()
    samples, preds = make_data(args.images, args.boxes, args.categories)
    print(f"{args.images} images x {args.boxes} boxes, {args.categories} categories")

    # warm-up on a few images: imports (scipy.optimize, the COCO backends) are not scoring time
    import scipy.optimize  # noqa: F401  (imported lazily by the Hungarian matcher)

    box_f1(samples[:5], preds, "strict")
    for backend in ("faster_coco_eval", "pycocotools"):
        coco_eval(*build_coco(samples[:5], preds)[:2], backend)

    strict, t_strict = timed(box_f1, samples, preds, "strict")
    released, t_released = timed(box_f1, samples, preds, "rexomni", coco_style=False)
    print(f"F1, strict (Hungarian, 10 IoU thresholds):       {t_strict}   f1@0.5 {strict.at(0.5)[2]:.4f}")
    print(f"F1, rexomni (greedy, per sample, 10 thresholds):  {t_released}   f1@0.5 {released.at(0.5)[2]:.4f}")

    (gt, results, _), t_build = timed(build_coco, samples, preds)
    fast, t_fast = timed(coco_eval, gt, results, "faster_coco_eval")
    ref, t_ref = timed(coco_eval, gt, results, "pycocotools")
    full, t_full = timed(coco_ap, samples, preds)
    print(f"COCO dicts from samples:                          {t_build}")
    print(f"COCO AP, faster-coco-eval:                        {t_fast}   AP {fast.stats[0]:.4f}")
    print(f"COCO AP, pycocotools:                             {t_ref}   AP {ref.stats[0]:.4f}")
    print(f"COCO AP end to end (coco_ap, faster-coco-eval):   {t_full}")
    print(f"speed ratio faster-coco-eval / pycocotools:       {t_ref.wall / t_fast.wall:7.1f}x wall "
          f"{t_ref.cpu / t_fast.cpu:7.1f}x cpu")
    assert abs(fast.stats[0] - ref.stats[0]) < 1e-6, "the backends disagree"


if __name__ == "__main__":
    main()
