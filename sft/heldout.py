"""Held-out parse-and-score: generate answers for examples the model never trained on, parse them
with the output grammar and score the boxes with the project's metrics (eval/).

Used during training (every ``eval_steps``), by the memorisation test and by the learning benchmark.
Only examples whose targets are boxes are scored (grounding, referring, GUI grounding, ...).
"""

from __future__ import annotations

import numpy as np
import torch

from rexomni.grammar import parse_output
from rexomni.tokens import END_OF_TEXT, IM_END, decode_answer

from .data import ExampleEncoder, SFTCollator


def box_examples(examples: list[dict]) -> list[dict]:
    """The examples whose answer is boxes (every target has a ``bbox`` and the task writes boxes)."""
    return [e for e in examples if e.get("targets") is not None and "point" not in e["task"]
            and all(t.get("bbox") is not None for t in e["targets"]) and e["task"] not in ("keypoints",)]


@torch.no_grad()
def generate_answers(model, encoder: ExampleEncoder, examples: list[dict], batch_size: int = 16,
                     max_new_tokens: int = 64, synced_gpus: bool = False) -> list[str]:
    """Greedy answers (text, up to the end of turn) for ``examples``, in batches."""
    from transformers import GenerationConfig

    tokenizer = encoder.tokenizer
    collate = SFTCollator(encoder.pad_id, encoder.image_token_id, padding_side="left")
    device = next(model.parameters()).device
    config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=encoder.pad_id,
                              eos_token_id=[tokenizer.convert_tokens_to_ids(t) for t in (IM_END, END_OF_TEXT)])
    was_training = model.training
    model.eval()
    texts = []
    try:
        for start in range(0, len(examples), batch_size):
            chunk = [encoder.encode(e, with_answer=False) for e in examples[start:start + batch_size]]
            batch = collate(chunk)
            batch.pop("labels")
            batch = {k: v.to(device) for k, v in batch.items()}
            if batch["pixel_values"].is_floating_point():
                batch["pixel_values"] = batch["pixel_values"].to(next(model.parameters()).dtype)
            out = model.generate(**batch, generation_config=config, synced_gpus=synced_gpus)
            prompt_length = batch["input_ids"].shape[1]
            texts += [decode_answer(tokenizer, row.tolist()) for row in out[:, prompt_length:]]
    finally:
        model.train(was_training)
    return texts


def score_answers(examples: list[dict], texts: list[str], codec: str = "center", ap: bool = False) -> dict[str, float]:
    """F1@0.5 (eval's strict protocol), mean IoU of each ground-truth box with its matched
    prediction (0 when unmatched), the share of answers that parse without problems and, with
    ``ap``, COCO AP50."""
    from rexomni.eval.boxes import match
    from rexomni.eval.data import Prediction
    from rexomni.eval.f1 import box_f1

    if len(examples) != len(texts):
        raise ValueError(f"{len(examples)} examples but {len(texts)} answers")
    samples, predictions, ious, clean = [], {}, [], 0
    for i, (example, text) in enumerate(zip(examples, texts)):
        parsed = parse_output(text, example["width"], example["height"], codec)
        clean += not parsed.problems
        boxes = [(phrase, item.coords) for phrase, item in parsed.items() if item.kind == "box"]
        key = str(i)
        objects = [{"phrase": t["phrase"], "bbox": list(map(float, t["bbox"]))} for t in example["targets"]]
        samples.append({"key": key, "objects": objects, "categories": list(example.get("phrases") or [])})
        predictions[key] = Prediction(boxes=np.array([b for _, b in boxes], dtype=np.float64).reshape(-1, 4),
                                      labels=[p for p, _ in boxes], scores=np.ones(len(boxes)))
        for phrase in {o["phrase"] for o in objects}:
            gt = [o["bbox"] for o in objects if o["phrase"] == phrase]
            pred = [b for p, b in boxes if p == phrase]
            m = match(np.array(pred, dtype=np.float64).reshape(-1, 4), np.array(gt, dtype=np.float64), 1e-9)
            ious += list(m.iou) + [0.0] * m.fn
    metrics = {"f1@0.5": box_f1(samples, predictions, "strict", coco_style=True).at(0.5)[2],
               "mean_iou": float(np.mean(ious)) if ious else 0.0,
               "parsed_clean": clean / max(len(texts), 1), "examples": float(len(texts))}
    if ap and any(s["objects"] for s in samples):
        from rexomni.eval.coco import coco_ap

        metrics["ap50"] = coco_ap(samples, predictions, "strict").metrics["coco/AP50"]
    return metrics


def evaluate_heldout(model, encoder: ExampleEncoder, examples: list[dict], codec: str = "center",
                     batch_size: int = 16, max_new_tokens: int = 64, ap: bool = False,
                     synced_gpus: bool = False) -> dict[str, float]:
    """Generate, parse and score the box examples among ``examples``."""
    examples = box_examples(examples)
    if not examples:
        return {}
    texts = generate_answers(model, encoder, examples, batch_size, max_new_tokens, synced_gpus)
    return score_answers(examples, texts, codec, ap=ap)
