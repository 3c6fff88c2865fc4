"""Where does learning from scratch get stuck? The probes behind docs/training.md's learning section.

    python bench/probe_learning.py squares [--side 30 45] [--background black|random] [--noise 0]
    python bench/probe_learning.py scenes [--sizes medium large] [--rope-theta 10] [--mrope-section 2 7 7]
    (both: [--steps 1600] [--eval-every 400] [--seed 0] [--threads N] [--save DIR])

Both train the tiny preset from random weights with a plain PyTorch loop (AdamW, constant learning
rate, batch 16, no clipping) on the project's encoder, collator and loss (tests/test_sft_train.py
shows the Trainer takes exactly the steps of such a loop) and, every ``--eval-every`` steps, generate on 64
held-out images and print mean IoU, F1@0.5 and the spread of the predicted box centres against
the true spread: a predicted spread near 0 means the model writes one constant box and ignores
the image. It also prints a teacher-forced read-out of the first box (see
``teacher_forced_readout``): with Qwen2.5-VL's M-RoPE, x1 and y1 follow from x0 and y0 (the
object's size) long before x0 and y0 find their image token's cell.

- ``squares``: one square per 112x112 image, drawn here; the difficulty is set by the side (px),
  the background (black, or a random colour with a contrasting square) and Gaussian pixel noise.
- ``scenes``: the synth engine's ``single`` mode (one shape of 3 kinds x 5 colours per scene, on a
  plain or noisy background); ``--rope-theta`` / ``--mrope-section`` change the tiny preset's
  M-RoPE (``--rope-theta 1e6 --mrope-section 4 6 6`` gives Qwen2.5-VL's, which turns the width
  positions of a 4x4 token grid by at most 1.8e-4 rad per step; ``--rope-theta 10 --mrope-section
  2 7 7`` the preset's positions before run 18 of docs/recipe.md).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time

import numpy as np
import torch
from PIL import Image, ImageDraw
from rexomni.eval.data import Prediction
from rexomni.eval.example import score_prediction
from rexomni.sft.config import load_config
from rexomni.sft.data import ExampleEncoder, MixtureDataset, SFTCollator
from rexomni.sft.losses import CausalLMLoss
from rexomni.sft.model_setup import load_model
from rexomni.sft.trainer import build_datasets, build_mixture

from rexomni.api import RexOmni
from rexomni.grammar import format_answer, parse_output
from rexomni.modeling import PRESETS
from rexomni.prompts import build_prompt

TINY_YAML = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sft", "configs", "tiny.yaml")
SIZE = 112


def square_example(rng: random.Random, side: tuple[int, int], background: str, noise: float) -> dict:
    """One square on a 112x112 image, as a referring example with its target."""
    back, fore = (0, 0, 0), (255, 255, 255)
    if background == "random":
        back = tuple(rng.randint(0, 255) for _ in range(3))
        fore = tuple(255 - c if abs(255 - 2 * c) > 100 else (c + 128) % 256 for c in back)  # always contrasting
    image = Image.new("RGB", (SIZE, SIZE), back)
    s = rng.randint(*side)
    x, y = rng.randint(0, SIZE - s), rng.randint(0, SIZE - s)
    ImageDraw.Draw(image).rectangle([x, y, x + s - 1, y + s - 1], fill=fore)
    if noise:
        pixels = np.asarray(image, np.float32)
        pixels = pixels + np.random.default_rng(rng.getrandbits(32)).normal(0, noise, pixels.shape)
        image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    target = {"phrase": "square", "bbox": [x, y, x + s, y + s]}
    return {"image": image, "prompt": build_prompt("detection", ["square"]), "phrases": ["square"],
            "answer": format_answer([target], SIZE, SIZE, "center", phrases=["square"]),
            "targets": [target], "width": SIZE, "height": SIZE, "task": "referring"}


def scene_data(sizes: list[str], seed: int) -> dict:
    return {"seed": seed, "codec": "center", "paraphrase": False, "sources": [{
        "name": "single", "tasks": {"referring": 1},
        "synth": {"mode": "single", "size": SIZE, "masks": False, "num_objects": [1, 1], "sizes": sizes,
                  "kinds": ["square", "circle", "ring"], "colors": ["red", "green", "blue", "yellow", "white"]}}]}


def heldout_answers(model, bundle, examples: list[dict]) -> tuple[list[str], dict[str, float]]:
    """The answers the detector API gives on ``examples`` (asked their phrases, greedy, grammar-
    constrained) and their pooled F1@0.5 and mean IoU by the per-example scorer."""
    detector = RexOmni(model, bundle.processor, bundle.settings)
    was_training = model.training
    model.eval()
    results = detector.predict([e["image"] for e in examples], categories=[e["phrases"] for e in examples],
                               max_new_tokens=40, batch_size=32)
    model.train(was_training)
    scores = [score_prediction(Prediction.from_result(r), e["targets"]) for r, e in zip(results, examples)]
    tp, pred, gt = (sum(getattr(s, k) for s in scores) for k in ("tp", "num_pred", "num_gt"))
    ious = [iou for s in scores for iou in s.best_iou]
    return [r.raw_text for r in results], {"f1@0.5": 2 * tp / max(pred + gt, 1),
                                           "mean_iou": float(np.mean(ious)) if ious else 0.0}


def centre_spread(examples: list[dict], texts: list[str]) -> tuple[float, float]:
    """(std of predicted box centres, std of true centres), in image fractions, x and y pooled."""
    predicted, true = [], []
    for example, text in zip(examples, texts):
        items = [item for _, item in parse_output(text, SIZE, SIZE, "center").items() if item.kind == "box"]
        if items:
            x0, y0, x1, y1 = items[0].coords
            predicted.append([(x0 + x1) / 2, (y0 + y1) / 2])
            tx0, ty0, tx1, ty1 = example["targets"][0]["bbox"]
            true.append([(tx0 + tx1) / 2, (ty0 + ty1) / 2])
    if not predicted:
        return 0.0, 0.0
    return float(np.std(predicted, axis=0).mean() / SIZE), float(np.std(true, axis=0).mean() / SIZE)


CELL_BINS = 250  # one image token's cell: 28 of 112 px


@torch.no_grad()
def teacher_forced_readout(model, encoder: ExampleEncoder, examples: list[dict], coord_ids: list[int]) -> dict:
    """How well the model places each coordinate of the first box when it reads the true answer up
    to it: the median |bin error| of the argmax for x0, y0, x1, y1, and for x0 the probability
    within 15 bins of the truth, within 15 bins of one cell to either side, and the correlation of
    the argmax with the truth. Mass one cell away means the model knows where the object sits
    inside a token's cell but not which token holds it."""
    batch = SFTCollator(encoder.pad_id, encoder.image_token_id)([encoder.encode(e) for e in examples])
    labels = batch.pop("labels")[:, 1:]
    was_training = model.training
    model.eval()
    logits = model(**batch).logits[:, :-1]
    model.train(was_training)
    bins = torch.full((max(int(labels.max()), max(coord_ids)) + 1,), -1)
    bins[torch.tensor(coord_ids)] = torch.arange(len(coord_ids))
    truth, probs = [], []
    for row_labels, row_logits in zip(labels, logits):
        at = (row_labels >= 0).nonzero().flatten()
        at = at[bins[row_labels[at]] >= 0][:4]  # the first box's four coordinate tokens
        truth.append(bins[row_labels[at]])
        probs.append(row_logits[at][:, coord_ids].softmax(-1))
    truth, probs = torch.stack(truth), torch.stack(probs)  # (examples, 4), (examples, 4, bins)
    errors = (probs.argmax(-1) - truth).abs().float().median(0).values.tolist()
    distance = (torch.arange(len(coord_ids)) - truth[:, :1]).abs()  # from the true x0, per bin
    x0 = probs[:, 0]
    return {"median_bin_error": dict(zip(("x0", "y0", "x1", "y1"), errors)),
            "x0_p_true": round(x0[distance <= 15].sum().item() / len(x0), 3),
            "x0_p_one_cell_off": round(x0[(distance - CELL_BINS).abs() <= 15].sum().item() / len(x0), 3),
            "x0_correlation": round(np.corrcoef(truth[:, 0], probs[:, 0].argmax(-1))[0, 1].item(), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=["squares", "scenes"])
    parser.add_argument("--steps", type=int, default=1600)
    parser.add_argument("--eval-every", type=int, default=400)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--soft-label-sigma", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--side", type=int, nargs=2, default=[30, 45], help="squares: side range in px")
    parser.add_argument("--background", choices=["black", "random"], default="black")
    parser.add_argument("--noise", type=float, default=0.0, help="squares: pixel noise std (0-255 scale)")
    parser.add_argument("--sizes", nargs="+", default=["small", "medium", "large"], help="scenes: size classes")
    parser.add_argument("--rope-theta", type=float, default=None)
    parser.add_argument("--mrope-section", type=int, nargs="+", default=None,
                        help="M-RoPE sections, t h w (a longer list interleaves the axes, rexomni.modeling)")
    parser.add_argument("--save", default=None, help="save the trained model to this folder")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rope_theta:
        PRESETS["tiny"]["text"]["rope_theta"] = args.rope_theta
    if args.mrope_section:
        PRESETS["tiny"]["text"]["mrope_section"] = args.mrope_section

    config = load_config(TINY_YAML, {"seed": args.seed, "eval_examples": 64, "train_examples": 10**8,
                                     "data": scene_data(args.sizes, args.seed)})
    bundle = load_model(config.model_args, seed=config.seed)
    model = bundle.model.train()
    encoder = ExampleEncoder(bundle.processor, config.system_prompt, config.max_length)
    if args.task == "scenes":
        train_set, _ = build_datasets(config, encoder)
        heldout_set = MixtureDataset(build_mixture(config), 64, None, seed="probe-heldout")
        heldout = [heldout_set.example(i) for i in range(64)]
        batches = (train_set[i] for i in range(10**8))
    else:
        make = lambda rng: square_example(rng, tuple(args.side), args.background, args.noise)
        rng = random.Random(args.seed)
        heldout = [make(random.Random(10**6 + i)) for i in range(64)]
        batches = (encoder.encode(make(rng)) for _ in iter(int, 1))
    collate = SFTCollator(encoder.pad_id, encoder.image_token_id)
    loss_fn = CausalLMLoss(bundle.coord_ids, args.soft_label_sigma, 0.5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        inputs = collate([next(batches) for _ in range(args.batch)])
        labels = inputs.pop("labels")
        loss = loss_fn(model(**inputs).logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.eval_every == 0 or step == args.steps:
            texts, metrics = heldout_answers(model, bundle, heldout)
            spread, true_spread = centre_spread(heldout, texts)
            readout = teacher_forced_readout(model, encoder, heldout, bundle.coord_ids)
            row = {"step": step, "seconds": round(time.perf_counter() - start), "loss": loss.item(),
                   "mean_iou": metrics["mean_iou"], "f1@0.5": metrics["f1@0.5"],
                   "centre_spread": spread, "true_spread": true_spread}
            print(json.dumps({**{k: round(v, 3) for k, v in row.items()}, "teacher_forced": readout}), flush=True)
            model.train()
    if args.save:
        model.save_pretrained(args.save)
        bundle.processor.save_pretrained(args.save)


if __name__ == "__main__":
    main()
