"""Held-out scores during training: the live model asked and scored exactly as ``rexomni eval`` asks and
scores a checkpoint.

Held-out samples are drawn from the training mixture's own sources with a seed that training never
uses. Each training task that a benchmark task scores gets its own set:

| training task | benchmark task (``rexomni eval``) | asked |
|---|---|---|
| grounding | detection | every category of the sample (absent ones answered None) |
| referring | referring | each phrase present in the image, in a request of its own |
| pointing  | pointing  | the phrases present in the image |

The model in training is wrapped in a :class:`rexomni.api.RexOmni` (same prompts, grammar-constrained
decoding, scores) and each set goes through :func:`rexomni.eval.runner.evaluate_samples`, so a
held-out number and the number ``rexomni eval`` gives on the saved checkpoint cannot disagree for
structural reasons. Used by the trainer every ``eval_steps``, the memorisation test and the learning
benchmark.
"""

from __future__ import annotations

import random
from typing import Any

from rexomni.eval.runner import DatasetSpec, evaluate_samples

from rexomni.api import RexOmni

# training task -> (benchmark task, what is asked)
HELDOUT_TASKS = {"grounding": ("detection", "categories"), "referring": ("referring", "each"),
                 "pointing": ("pointing", "present")}
# The metrics logged per set (the benchmark computes more; these are what a training curve needs).
LOGGED = ("f1@0.5", "f1@mean", "mean_iou", "parsed_clean", "ref/acc@0.5", "point/f1", "coco/AP50")


def heldout_sets(mixture, n: int, seed: str = "heldout") -> dict[str, list[dict]]:
    """``n`` samples (sample schema, keyed) for each scored task the mixture trains, drawn with a seed
    of its own from the sources that train that task."""
    from rexomni.eval.data import assign_keys

    sets = {}
    for task in HELDOUT_TASKS:
        sources = [s for s in mixture.sources if s.tasks.get(task, 0) > 0]
        if not sources or n <= 0:
            continue
        rng = random.Random(f"{seed}:{mixture.seed}:{task}")
        samples = []
        for i in range(n):
            source = rng.choices(sources, [s.weight for s in sources])[0]
            source.load()
            samples.append(dict(source.draw(rng), id=f"{task}-{i}"))
        sets[task] = assign_keys(samples)
    return sets


def dataset_spec(task: str, max_new_tokens: int, ap: bool = False, **predict: Any) -> DatasetSpec:
    """The benchmark entry a held-out set is scored as (what ``rexomni eval`` would run for it)."""
    benchmark_task, ask = HELDOUT_TASKS[task]
    metrics = ["pointing"] if benchmark_task == "pointing" else ["f1"] + (["referring"] if task == "referring" else [])
    if ap and benchmark_task != "pointing":
        metrics.append("coco")
    return DatasetSpec(name=f"heldout-{task}", annotations="", task=benchmark_task, ask=ask, metrics=metrics,
                       predict={"max_new_tokens": max_new_tokens, **predict})


def evaluate_heldout(model, processor, settings, sets: dict[str, list[dict]], batch_size: int = 16,
                     max_new_tokens: int = 64, ap: bool = False, synced_gpus: bool = False) -> dict[str, float]:
    """``task/metric`` -> value for each held-out set, the model put in eval mode meanwhile.

    ``ap`` adds COCO AP (needs the eval extra); ``synced_gpus`` keeps ZeRO-3 ranks generating in step.
    """
    device = str(next(model.parameters()).device)
    detector = RexOmni(model, processor, settings, device=device, name="training")
    predict = {"synced_gpus": True} if synced_gpus else {}
    was_training = model.training
    model.eval()
    out: dict[str, float] = {}
    try:
        for task, samples in sets.items():
            spec = dataset_spec(task, max_new_tokens, ap, **predict)
            metrics, _ = evaluate_samples(detector, samples, spec, batch_size=batch_size, progress=False)
            out.update({f"{task}/{k}": v for k, v in metrics.items() if k in LOGGED})
    finally:
        model.train(was_training)
    return out
