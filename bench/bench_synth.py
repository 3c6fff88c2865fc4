"""Synthetic scene speed, and the rule-based negative text engine's speed.

    python bench/bench_synth.py [--size 224] [--scenes 1000] [--workers 2]

Scenes per second for each mode with every label (boxes, RLE masks, points, phrases, referring
expressions), in this process and in ``--workers`` processes. The ratio is taken against a baseline
measured in this same process: the same scenes without their RLE masks (``masks=False``), i.e. what
the masks cost. Then foils per second of ``RuleFoiler`` on COCO category names and longer
descriptions. The machine's load moves the absolute numbers; the ratio is steadier.
"""

from __future__ import annotations

import argparse
import time
from multiprocessing import Pool

from rexomni.data_engines.negatives_text import RuleFoiler
from rexomni.data_engines.synth import MODES, generate_scene


def rate(fn, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - start)


def _scenes(args: tuple[int, int, int, str]) -> int:
    start, n, size, mode = args
    for i in range(start, start + n):
        generate_scene(i, size, mode)
    return n


def parallel_rate(n: int, size: int, mode: str, workers: int) -> float:
    chunk = n // workers
    with Pool(workers) as pool:
        pool.map(_scenes, [(0, 2, size, mode)] * workers)  # start-up and imports are not counted
        start = time.perf_counter()
        done = sum(pool.map(_scenes, [(w * chunk, chunk, size, mode) for w in range(workers)]))
        return done / (time.perf_counter() - start)


DESCRIPTIONS = [
    "a red car parked on the left", "two dogs playing with a ball", "a man sitting on a wooden chair",
    "the woman in front of the white bus", "a small yellow umbrella", "a dog without a leash",
    "person riding a horse", "three cups on top of the table", "the large black cat under the bench",
    "a boy holding a baseball bat",
]
COCO = ("person,bicycle,car,motorcycle,airplane,bus,train,truck,boat,traffic light,fire hydrant,stop sign,"
        "parking meter,bench,bird,cat,dog,horse,sheep,cow,elephant,bear,zebra,giraffe,backpack,umbrella,handbag,"
        "tie,suitcase,frisbee,skis,snowboard,sports ball,kite,baseball bat,baseball glove,skateboard,surfboard,"
        "tennis racket,bottle,wine glass,cup,fork,knife,spoon,bowl,banana,apple,sandwich,orange,broccoli,carrot,"
        "hot dog,pizza,donut,cake,chair,couch,potted plant,bed,dining table,toilet,tv,laptop,mouse,remote,"
        "keyboard,cell phone,microwave,oven,toaster,sink,refrigerator,book,clock,vase,scissors,teddy bear,"
        "hair drier,toothbrush").split(",")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--scenes", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    size, n = args.size, args.scenes

    for mode in MODES:
        base = rate(lambda i, m=mode: generate_scene(i, size, m, masks=False), n)
        one = rate(lambda i, m=mode: generate_scene(i, size, m), n)
        many = parallel_rate(n, size, mode, args.workers)
        print(f"{mode:<10} {size}x{size}: {one:6.0f} scenes/s in 1 process, {many:6.0f} in {args.workers}; "
              f"without masks {base:6.0f} (with masks = {one / base:.2f} x without)")

    foiler = RuleFoiler()
    for name, phrases in (("COCO names", COCO), ("descriptions", DESCRIPTIONS)):
        reps = max(1, 2000 // len(phrases))
        start = time.perf_counter()
        total = sum(len(foiler(p)) for _ in range(reps) for p in phrases)
        elapsed = time.perf_counter() - start
        phrases_per_s = reps * len(phrases) / elapsed
        print(f"rule foils, {name:<12}: {total / elapsed:8.0f} foils/s, {phrases_per_s:6.0f} phrases/s, "
              f"{total / (reps * len(phrases)):.1f} foils per phrase")


if __name__ == "__main__":
    main()
