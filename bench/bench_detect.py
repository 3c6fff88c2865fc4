"""Throughput of ``RexOmni.detect`` against a naive loop, and the cost of scores and of constraints.

All runs use the same tiny model in the same process. The model first memorises the benchmark's
images (a few seconds of training), so that every mode writes the same, well-formed answers of
the same length: the ratios then measure the machinery, not different outputs. (A random model
would write garbage until max_new_tokens without constraints and stop early with them.)

    python bench/bench_detect.py                # 16 images, prints a table of images/s and ratios

Measured numbers:
- detect (batched, constrained, scores) vs a naive loop (processor + generate one image at a time,
  no constraints, no scores): images/s ratio;
- scores on vs off, constrained on vs off (both batched): time ratio (> 1 means the feature costs).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from rexomni.api import RexOmni
from rexomni.grammar import format_answer, parse_output
from rexomni.modeling import init_checkpoint
from rexomni.tokens import IM_END, decode_answer

CATEGORIES = ["red box", "blue box", "green box"]
COLORS = {"red box": (220, 40, 40), "blue box": (40, 60, 220), "green box": (40, 200, 60)}


def make_scenes(n: int, size: int = 112, seed: int = 0) -> list[tuple[Image.Image, list[dict]]]:
    """Noisy backgrounds with one to three coloured rectangles, and their objects."""
    rng = np.random.RandomState(seed)
    scenes = []
    for _ in range(n):
        pixels = rng.randint(0, 90, (size, size, 3)).astype(np.uint8)
        objects = []
        for phrase in rng.choice(CATEGORIES, size=rng.randint(1, 4), replace=False):
            w, h = rng.randint(15, 50, size=2)
            x0, y0 = rng.randint(0, size - w), rng.randint(0, size - h)
            pixels[y0:y0 + h, x0:x0 + w] = COLORS[phrase]
            objects.append({"phrase": str(phrase), "bbox": [float(x0), float(y0), float(x0 + w), float(y0 + h)]})
        scenes.append((Image.fromarray(pixels), objects))
    return scenes


def memorise(model: RexOmni, scenes, steps: int, lr: float = 5e-3) -> float:
    """Full-batch training on the scenes' answers (loss on the answer tokens only); the last loss."""
    texts, images, prompt_lengths = [], [], []
    for image, objects in scenes:
        [request] = model.prepare(image, "detection", CATEGORIES)
        prompt = model.chat_text(request["prompt"])
        answer = format_answer(objects, *image.size, phrases=CATEGORIES)
        texts.append(prompt + answer + IM_END)
        images.append(request["image"])
        prompt_lengths.append(len(model.processor(text=[prompt], images=[request["image"]])["input_ids"][0]))
    tokenizer = model.tokenizer
    tokenizer.padding_side = "right"  # labels line up with the prompt lengths counted above
    batch = model.processor(text=texts, images=images, padding=True, return_tensors="pt")
    tokenizer.padding_side = "left"
    labels = batch["input_ids"].clone()
    for i, n in enumerate(prompt_lengths):
        labels[i, :n] = -100
    labels[batch["attention_mask"] == 0] = -100
    net = model.model
    net.train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        loss = net(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    net.eval()
    return loss.item()


def naive_loop(model: RexOmni, images, max_new_tokens: int) -> list[tuple[str, int]]:
    """What a user writes first: the processor and generate, one image at a time, then parse.

    Returns (answer text, tokens generated) per image.
    """
    stop = [model.tokenizer.convert_tokens_to_ids(t) for t in (IM_END, "<|endoftext|>")]
    out = []
    for image in images:
        [request] = model.prepare(image, "detection", CATEGORIES)
        inputs = model.processor(text=[model.chat_text(request["prompt"])], images=[request["image"]],
                                 return_tensors="pt")
        with torch.inference_mode():
            ids = model.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop,
                                       pad_token_id=model.tokenizer.pad_token_id)
        generated = ids[0, inputs["input_ids"].shape[1]:].tolist()
        text = decode_answer(model.tokenizer, generated)
        parse_output(text, *image.size, model.codec)
        out.append((text, len(generated)))
    return out


def timed(runs: dict, repeats: int) -> tuple[dict, dict]:
    """Fastest seconds and last output per run.

    Runs are interleaved so that changes in machine load hit all alike, and the fastest repeat is
    kept: on a shared machine the slower ones measure the neighbours.
    """
    outputs = {name: fn() for name, fn in runs.items()}  # warm-up
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            outputs[name] = fn()
            times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    folder = init_checkpoint(tempfile.mkdtemp(prefix="rexomni_bench_"), preset="tiny")
    model = RexOmni.from_pretrained(folder)
    scenes = make_scenes(args.images)
    images = [image for image, _ in scenes]
    loss = memorise(model, scenes, args.train_steps)

    def detect(**kw):
        return lambda: model.detect(images, CATEGORIES, max_new_tokens=args.max_new_tokens,
                                    batch_size=args.batch_size, **kw)

    runs = {
        "naive loop (1 image, no constraints, no scores)": lambda: naive_loop(model, images, args.max_new_tokens),
        "detect (batched, constrained, scores)": detect(),
        "detect, scores off": detect(scores=False),
        "detect, constraints off": detect(constrained=False),
    }
    seconds, outputs = timed(runs, args.repeats)

    def texts(out):
        return [o[0] if isinstance(o, tuple) else o.raw_text for o in out]

    def tokens(out):
        return sum(o[1] if isinstance(o, tuple) else o.num_generated_tokens for o in out)

    reference = texts(outputs["detect (batched, constrained, scores)"])
    answers = [format_answer(objects, *image.size, phrases=CATEGORIES) for image, objects in scenes]
    print(f"tiny model, {args.images} images of 112x112, torch threads {torch.get_num_threads()}, "
          f"final training loss {loss:.3f}")
    print(f"memorised answers reproduced: {sum(a == b for a, b in zip(reference, answers))}/{len(answers)}")
    print(f"{'run':<50} {'s':>8} {'img/s':>8} {'tokens':>7} {'same text':>10}")
    for name in runs:
        same = sum(a == b for a, b in zip(texts(outputs[name]), reference))
        print(f"{name:<50} {seconds[name]:8.3f} {args.images / seconds[name]:8.1f} {tokens(outputs[name]):>7} "
              f"{same:>7}/{args.images}")
    full = seconds["detect (batched, constrained, scores)"]
    naive = seconds["naive loop (1 image, no constraints, no scores)"]
    print(f"detect vs naive loop, images/s ratio: {naive / full:.2f}x")
    print(f"cost of scores (time with / without): {full / seconds['detect, scores off']:.3f}")
    print(f"cost of constrained decoding (time with / without): {full / seconds['detect, constraints off']:.3f}")


if __name__ == "__main__":
    main()
