"""Where do a model's referring boxes go? The probe behind docs/recipe.md's binding runs.

    python bench/probe_referring.py MODEL [MODEL ...] [--scenes 32] [--seed 20261201] [--threads 1]

Each present phrase of the synthetic benchmark's scenes (one to four shapes, hard distractors) is
asked alone, and the top box is put on the scene object it overlaps most (IoU >= 0.3): the right
object, a shape of the same colour and another kind, of the same kind and another colour, another
shape, or none. This separates "does not see the object" from "sees a shape but binds the phrase to
the wrong one", which a single F1 hides; for the right objects it prints the IoU as well.
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np

OUTCOMES = ("right object", "same colour, other kind", "same kind, other colour", "other shape", "no shape",
            "answered None")


def outcome(box, wanted: dict, objects: list[dict]) -> tuple[str, float]:
    """Which object the top box lands on, and its IoU with the wanted one."""
    from rexomni.eval.boxes import box_iou

    if box is None:
        return "answered None", 0.0
    ious = box_iou([box], [o["bbox"] for o in objects])[0]
    best = objects[int(ious.argmax())]
    if ious.max() < 0.3:
        return "no shape", 0.0
    got, want = best["attributes"], wanted["attributes"]
    if best["phrase"] == wanted["phrase"]:
        return "right object", float(ious.max())
    if got["color"] == want["color"]:
        return "same colour, other kind", 0.0
    if got["kind"] == want["kind"]:
        return "same kind, other colour", 0.0
    return "other shape", 0.0


def probe(model_path: str, scenes: int, seed: int) -> None:
    from rexomni.eval.runner import synth_samples

    from rexomni.api import RexOmni

    model = RexOmni.from_pretrained(model_path, device="cpu")
    samples = synth_samples(dict(mode="single", size=224, sizes=["medium", "large"], num_objects=[1, 4],
                                 distractors=True, n=scenes, seed=seed))
    counts, right_ious = Counter(), []
    for sample in samples:
        objects = sample["objects"]
        for phrase in dict.fromkeys(o["phrase"] for o in objects):
            result = model.predict(sample["image"], task="referring", categories=[phrase])
            box = [float(v) for v in result.boxes[0]] if len(result.boxes) else None
            wanted = next(o for o in objects if o["phrase"] == phrase)
            name, iou = outcome(box, wanted, objects)
            counts[name] += 1
            if name == "right object":
                right_ious.append(iou)
    total = sum(counts.values())
    print(f"{model_path}: {total} phrases of {scenes} scenes")
    for name in OUTCOMES:
        print(f"  {name:26s} {counts[name]:5d}  {counts[name] / total:.2f}")
    ious = np.asarray(right_ious)
    if len(ious):
        print(f"  right object: IoU mean {ious.mean():.2f}, >= 0.5 {np.mean(ious >= 0.5):.2f}; "
              f"Acc@0.5 over all phrases {np.sum(ious >= 0.5) / total:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="checkpoint folders or short names (rexomni-synth)")
    parser.add_argument("--scenes", type=int, default=32)
    parser.add_argument("--seed", type=int, default=20261201, help="the benchmark's scenes by default")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    for path in args.models:
        probe(path, args.scenes, args.seed)


if __name__ == "__main__":
    main()
