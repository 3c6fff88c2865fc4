"""Serializer compactness and parser throughput.

    python bench/bench_grammar.py [--answers 10000] [--tokenizer PATH]

Tokens per box are counted with the offline test tokenizer (its `,` and coordinate tokens are single
tokens, as in the real Qwen2.5-VL tokenizer) and, with ``--tokenizer``, next to it with a real
checkpoint's tokenizer as ``rexomni.checkpoint.load_tokenizer`` loads it (e.g. a folder in the
released Rex-Omni's layout); the floor is 4 coordinates plus one separator.
Parser speed is reported in boxes per second and as a ratio against a baseline that only pulls the
numbers out with one regular expression (no groups, no checks): the cost of robustness.
"""

from __future__ import annotations

import argparse
import re
import time

import numpy as np

from rexomni import format_answer, parse_output
from rexomni.offline_tokenizer import build_test_tokenizer

W, H = 1280, 960


def random_objects(rng: np.random.Generator, phrases: list[str], n: int) -> list[dict]:
    xy0 = rng.uniform(0, [W - 20, H - 20], size=(n, 2))
    wh = rng.uniform(4, 200, size=(n, 2))
    boxes = np.concatenate([xy0, np.minimum(xy0 + wh, [W, H])], axis=1)
    return [{"phrase": phrases[i % len(phrases)], "bbox": b.tolist()} for i, b in enumerate(boxes)]


def tokens_per_box(tokenizer, rng, num_phrases: int, num_boxes: int) -> float:
    phrases = [f"object {i}" for i in range(num_phrases)]
    text = format_answer(random_objects(rng, phrases, num_boxes), W, H, phrases=phrases) + "<|im_end|>"
    return len(tokenizer.encode(text, add_special_tokens=False)) / num_boxes


def baseline_parse(text: str) -> int:
    return len(re.findall(r"<(\d+)>", text)) // 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--answers", type=int, default=10_000)
    parser.add_argument("--tokenizer", help="a checkpoint folder to count with too, next to the offline tokenizer")
    args = parser.parse_args()
    tokenizers = {"offline": build_test_tokenizer()}
    if args.tokenizer:
        from rexomni.checkpoint import load_tokenizer
        from rexomni.tokens import prepare_tokenizer

        tokenizers[args.tokenizer] = load_tokenizer(args.tokenizer)
        prepare_tokenizer(tokenizers[args.tokenizer])  # coordinate tokens for a plain base, as loading adds them
    print("tokens per box" + "".join(f"  {name:>12}" for name in tokenizers))
    for label, num_phrases, num_boxes in (("dense scene (400 boxes, 1 phrase)", 1, 400),
                                          ("20 phrases x 5 boxes", 20, 100), ("20 phrases x 1 box", 20, 20)):
        counts = [tokens_per_box(t, np.random.default_rng(0), num_phrases, num_boxes) for t in tokenizers.values()]
        print(f"  {label:<36}" + "".join(f"  {c:>12.3f}" for c in counts))

    rng = np.random.default_rng(0)
    answers = []
    for _ in range(args.answers):
        phrases = [f"thing {i}" for i in range(rng.integers(1, 6))]
        answers.append(format_answer(random_objects(rng, phrases, int(rng.integers(1, 21))), W, H, phrases=phrases))
    start = time.perf_counter()
    parsed_boxes = sum(sum(len(v) for v in parse_output(a, W, H).phrases.values()) for a in answers)
    parse_s = time.perf_counter() - start
    start = time.perf_counter()
    base_boxes = sum(baseline_parse(a) for a in answers)
    base_s = time.perf_counter() - start
    assert parsed_boxes == base_boxes
    print(
        f"parser: {args.answers} answers, {parsed_boxes} boxes in {parse_s:.2f} s "
        f"= {parsed_boxes / parse_s:,.0f} boxes/s"
    )
    print(
        f"regex-only baseline: {base_boxes / base_s:,.0f} boxes/s; parser / baseline time ratio {parse_s / base_s:.1f}x"
    )


if __name__ == "__main__":
    main()
