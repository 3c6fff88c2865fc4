"""`rexomni data ...`: synthesise scenes, convert public formats, preview mixtures, write negatives.

    rexomni data synth --n 1000 --out data/synth --seed 0 [--mode shapes ocr keypoints]
    rexomni data convert --format coco instances_val2017.json --out coco_val.jsonl [--image-root DIR]
    rexomni data mix data_engines/configs/synth_mix.yaml --n 1000 [--out examples.jsonl]
    rexomni data negatives "a red car on the left" "two dogs" [--n 5] [--llm PATH | --endpoint URL --model M]
    rexomni data negative-images coco_train.jsonl --inpaint-model DIR [--clip-model DIR] --out data/coco_neg
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from rexomni.cli import HelpFormatter, build_parser

from .readers import FORMATS
from .synth import MODES, SIZES


def _parser() -> argparse.ArgumentParser:
    parser = build_parser("data", "Data engines: synthetic scenes, format conversion, mixtures and negatives.")
    sub = parser.add_subparsers(dest="command", required=True)
    add = lambda name, **kw: sub.add_parser(name, formatter_class=HelpFormatter, **kw)

    synth = add("synth", help="write synthetic scenes (images + samples.jsonl)")
    synth.add_argument("--n", type=int, required=True, help="number of scenes")
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--seed", type=int, default=0, help="scene i is drawn with seed SEED * 1000003 + i")
    synth.add_argument("--size", type=int, default=224, help="image side in pixels")
    synth.add_argument("--mode", nargs="+", default=["shapes"], choices=MODES, help="scene kinds, taken in turn")
    synth.add_argument("--objects", type=int, nargs=2, metavar=("MIN", "MAX"), default=None,
                       help="objects per scene (default: the mode's own range)")
    synth.add_argument("--sizes", nargs="+", choices=SIZES, default=None,
                       help="object size classes of shapes/single scenes (default: all)")
    synth.add_argument("--negative-prob", type=float, default=0.0, help="chance of a negative phrase per shapes scene")
    synth.add_argument("--ood", action="store_true", help="draw only the held-out shape kinds")
    synth.add_argument("--format", default="png", choices=["png", "jpg"], help="image file format")

    convert = add("convert", help="read a public format, print the report, write our JSONL")
    convert.add_argument("input", help="annotation file or folder")
    convert.add_argument("--out", required=True, help="output .jsonl")
    convert.add_argument("--format", choices=FORMATS, default=None, help="detected when left out")
    convert.add_argument("--image-root", default=None, help="folder the image paths are relative to")
    convert.add_argument("--no-check-images", action="store_true", help="trust the annotation, do not open images")
    convert.add_argument("--split", default=None, help="refcoco: keep only this split")
    convert.add_argument("--label-map", default=None, help="odvg: JSON file mapping label ids to names")

    mix = add("mix", help="draw examples from a mixture spec and print the counts per task")
    mix.add_argument("spec", help="mixture YAML")
    mix.add_argument("--n", type=int, default=1000, help="examples to draw")
    mix.add_argument("--seed", type=int, default=None, help="overrides the spec's seed")
    mix.add_argument("--out", default=None, help="write the examples as JSONL (in-memory images saved as PNG)")

    neg = add("negatives", help="print foils (contradicting descriptions) of phrases")
    neg.add_argument("phrases", nargs="+", help="the phrases to find look-alikes of")
    neg.add_argument("--n", type=int, default=5, help="foils per phrase")
    neg.add_argument("--seed", type=int, default=0, help="seed of the rule foiler and of LLM sampling")
    neg.add_argument("--llm", default=None, help="local causal LM folder: LLM foils instead of rules")
    neg.add_argument("--endpoint", default=None, help="OpenAI-compatible API root (http://host:port/v1)")
    neg.add_argument("--model", default=None, help="model name for --endpoint")
    neg.add_argument("--method", default="recombination", choices=["recombination", "summary"],
                     help="LLM prompting method: recombine the phrase's parts, or summarise then contradict")
    neg.add_argument("--cache", default=None, help="folder caching LLM answers")

    images = add("negative-images", help="paint negative images into real photos (offline) and write them as a "
                                         "data set a mixture reads")
    images.add_argument("input", help="data set of real photos: our JSONL, or any format that convert reads")
    images.add_argument("--out", required=True, help="output folder: images/, samples.jsonl, progress.json")
    images.add_argument("--format", choices=FORMATS, default=None, help="input format, detected when left out")
    images.add_argument("--image-root", default=None, help="folder the image paths are relative to")
    images.add_argument("--inpaint-model", required=True, metavar="DIR",
                        help="local folder of a diffusers inpainting pipeline (hub names are not fetched)")
    images.add_argument("--clip-model", default=None, metavar="DIR",
                        help="local CLIPModel folder: keep a painting only if CLIP matches it to its foil")
    images.add_argument("--clip-threshold", type=float, default=0.25,
                        help="least cosine similarity of the painted box and the foil (with --clip-model)")
    images.add_argument("--packing", choices=["separate", "concat", "both"], default="both",
                        help="the negative alone, side by side with its original, or both (two samples each)")
    images.add_argument("--per-image", type=int, default=1, help="negatives painted per input image at most")
    images.add_argument("--limit", type=int, default=None, help="edit only the first LIMIT images")
    images.add_argument("--seed", type=int, default=0, help="image i's edits are drawn with seed 'SEED:i'")
    images.add_argument("--device", default="cpu", help="torch device of the inpainting and CLIP models")
    images.add_argument("--steps", type=int, default=30, help="inpainting denoising steps")
    images.add_argument("--guidance-scale", type=float, default=7.5, help="classifier-free guidance scale")
    images.add_argument("--resolution", type=int, default=512, help="side of the square the pipeline paints at")
    images.add_argument("--resume", action="store_true",
                        help="continue the run in a non-empty --out (same settings) instead of refusing it")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"synth": _synth, "convert": _convert, "mix": _mix, "negatives": _negatives,
                "negative-images": _negative_images}[args.command](args)
    except (OSError, ValueError) as e:  # a missing or malformed input: one line, no traceback
        print(f"rexomni data {args.command}: error: {e}", file=sys.stderr)
        return 2


def _synth(args) -> int:
    from .synth import OOD_KINDS, write_synth_dataset

    options = {"negative_prob": args.negative_prob}
    if args.objects:
        options["num_objects"] = tuple(args.objects)
    if args.sizes:
        options["sizes"] = args.sizes
    if args.ood:
        options["kinds"] = OOD_KINDS
    path = write_synth_dataset(args.out, args.n, seed=args.seed, size=args.size, modes=args.mode,
                               image_format=args.format, **options)
    print(f"wrote {args.n} scenes: {path}")
    return 0


def _convert(args) -> int:
    from .readers import read_dataset, write_samples

    options = {}
    if args.split:
        options["split"] = args.split
    if args.label_map:
        options["label_map"] = args.label_map
    samples, report = read_dataset(args.input, args.format, args.image_root, not args.no_check_images, **options)
    print(report)
    n = write_samples(samples, args.out)
    print(f"wrote {n} samples: {args.out}")
    return 0


def _mix(args) -> int:
    from .mixture import Mixture

    mixture = Mixture.from_yaml(args.spec)
    examples = mixture.take(args.n, seed=args.seed, progress=True)
    if args.out:
        _write_examples(examples, args.out)
        print(f"wrote {len(examples)} examples: {args.out}")
    print(mixture.report())
    return 0


def _write_examples(examples: list[dict], path: str) -> None:
    folder = os.path.join(os.path.dirname(os.path.abspath(path)), "images")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for i, ex in enumerate(examples):
            ex = dict(ex)
            if not isinstance(ex["image"], str):  # an in-memory scene
                os.makedirs(folder, exist_ok=True)
                ex["image"].save(os.path.join(folder, f"{i:07d}.png"))
                ex["image"] = os.path.join("images", f"{i:07d}.png")
            ex["targets"] = [{k: v for k, v in t.items() if k != "mask"} for t in ex["targets"]]
            f.write(json.dumps(ex, ensure_ascii=False) + "\n")


def _negatives(args) -> int:
    from .negatives_text import ChatCompletionsGenerator, LLMFoiler, RuleFoiler, TransformersGenerator

    if args.llm or args.endpoint:
        if args.endpoint and not args.model:
            print("rexomni data negatives: --endpoint needs --model", file=sys.stderr)
            return 2
        generator = TransformersGenerator(args.llm) if args.llm else ChatCompletionsGenerator(args.endpoint, args.model)
        foils = LLMFoiler(generator, cache_dir=args.cache, seed=args.seed).foils(args.phrases, args.n, args.method)
    else:
        foiler = RuleFoiler()
        foils = [foiler(p, n=args.n, rng=args.seed) for p in args.phrases]
    for phrase, phrase_foils in zip(args.phrases, foils):
        print(json.dumps({"phrase": phrase, "foils": phrase_foils}, ensure_ascii=False))
    return 0


def _negative_images(args) -> int:
    from .negatives_image import ClipFilter, InpaintingBackend, write_negative_images
    from .readers import CORRUPT_IMAGE, MISSING_IMAGE, read_dataset

    # The models first: a wrong folder should fail before the data set is read.
    try:
        backend = InpaintingBackend(args.inpaint_model, args.device, args.steps, args.guidance_scale, args.resolution)
    except ImportError as e:
        print(f"rexomni data negative-images: error: {e}", file=sys.stderr)
        return 2
    clip = ClipFilter(args.clip_model, args.clip_threshold, args.device) if args.clip_model else None
    samples, read_report = read_dataset(args.input, args.format, args.image_root)
    print(read_report)
    report = write_negative_images(samples, args.out, backend, clip, packing=args.packing, per_image=args.per_image,
                                   limit=args.limit, seed=args.seed, resume=args.resume,
                                   source=os.path.abspath(args.input))
    report.unreadable += read_report.dropped[MISSING_IMAGE] + read_report.dropped[CORRUPT_IMAGE]  # dropped on reading
    print(f"{report}: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
