"""The core's subcommands: ``rexomni detect`` and ``rexomni model init|grow``."""

from __future__ import annotations

import json
import os
import sys

from .checkpoint import DEFAULT_MODEL
from .cli import build_parser
from .negatives import DEFAULT_BETA, DEFAULT_THRESHOLD
from .tasks import get_task

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _split(text: str | None) -> list[str]:
    return [s.strip() for s in (text or "").split(",") if s.strip()]


def expand_images(sources: list[str]) -> list[str]:
    """Files and URLs as given; a directory gives its image files, sorted."""
    out = []
    for source in sources:
        if os.path.isdir(source):
            out += sorted(os.path.join(source, f) for f in os.listdir(source) if f.lower().endswith(IMAGE_SUFFIXES))
        else:
            out.append(source)
    return out


def detect_main(argv: list[str] | None = None) -> int:
    parser = build_parser("detect", "Detect categories in images (without --categories: everything the model "
                                    "sees, named by it); write one JSON line per image.")
    parser.add_argument("images", nargs="+", help="image files, directories or http(s) URLs")
    parser.add_argument("--categories", default=None,
                        help="comma-separated categories, e.g. person,dog (left out: the detect_all task, "
                             "the model names the objects)")
    parser.add_argument("--negatives", default=None,
                        help="comma-separated phrases NOT to detect, or 'auto' (look-alikes of the categories)")
    parser.add_argument("--suppress", action="store_true",
                        help="drop boxes that score like a negative (NNC, docs/negatives.md); needs --negatives")
    parser.add_argument("--suppress-beta", type=float, default=DEFAULT_BETA, help="NNC's weight of the negatives")
    parser.add_argument("--suppress-threshold", type=float, default=DEFAULT_THRESHOLD,
                        help="NNC keeps boxes with sigmoid(S_pos - beta * max S_neg) at or above this")
    parser.add_argument("--ood", action="store_true",
                        help="add ood_scores (high: a known category) to every box; needs --negatives")
    parser.add_argument("--score-negatives-only", action="store_true",
                        help="use --negatives only to rescore boxes (--suppress, --ood), not in the prompt: for "
                             "models never trained with negatives")
    parser.add_argument("--task", default="detection", help="detection, pointing, ocr_box, ... (see docs/api.md)")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="checkpoint folder or hub id (default: the small model shipped with rexomni)")
    parser.add_argument("--out", default="-", help="results JSON Lines file ('-' for stdout)")
    parser.add_argument("--draw", default=None, metavar="DIR", help="also write annotated images here")
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:1, ...")
    parser.add_argument("--backend", default="transformers", choices=("transformers", "vllm"),
                        help="inference engine (vllm: GPU only)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="answer length limit in tokens (default: the checkpoint's, else 1024)")
    parser.add_argument("--max-boxes", type=int, default=None, help="stop after this many items per image")
    parser.add_argument("--threshold", type=float, default=0.0, help="drop items scoring below this")
    parser.add_argument("--presence-threshold", type=float, default=None,
                        help="answer an asked phrase None when None holds at least this share of the probability "
                             "(docs/api.md; default: the checkpoint's, 0.5 for the shipped model; the released "
                             "weights let the likeliest token decide)")
    parser.add_argument("--no-constrained", action="store_true", help="let the model write freely")
    args = parser.parse_args(argv)

    from tqdm.auto import tqdm

    from .api import RexOmni
    from .images import ImageLoadError, load_image

    task, categories = args.task, _split(args.categories) if args.categories is not None else None
    if categories == []:
        parser.error("--categories needs at least one category")
    if categories is None and get_task(task).name == "detection":
        task = "detect_all"  # no categories: the model names what it sees
    elif categories is None and get_task(task).asks_categories:
        parser.error(f"--task {task} needs --categories")
    negatives = "auto" if args.negatives == "auto" else _split(args.negatives)
    if (args.suppress or args.ood) and not negatives:
        parser.error("--suppress and --ood compare each box with negatives: give --negatives")
    images = expand_images(args.images)
    if not images:
        parser.error("no images found")
    try:
        model = RexOmni.from_pretrained(args.model, device=args.device, backend=args.backend)
    except (OSError, ValueError) as e:  # a missing folder, an unreachable hub id, a bad device: one line
        print(f"rexomni detect: {e}", file=sys.stderr)
        return 2
    if args.draw:
        os.makedirs(args.draw, exist_ok=True)
    decoding = {} if args.presence_threshold is None else {"presence_threshold": args.presence_threshold}
    out = sys.stdout if args.out == "-" else open(args.out, "w")
    done = skipped = 0
    try:
        progress = tqdm(total=len(images), desc="rexomni detect", unit="img", file=sys.stderr)
        for start in range(0, len(images), args.batch_size):
            batch, loaded = images[start:start + args.batch_size], []
            for path in batch:
                try:
                    loaded.append((path, load_image(path)))
                except ImageLoadError as e:
                    skipped += 1
                    print(f"rexomni detect: skipped: {e}", file=sys.stderr)
            if loaded:
                results = model.predict([img for _, img in loaded], task=task, categories=categories,
                                        negatives=negatives, negatives_in_prompt=not args.score_negatives_only,
                                        suppress=args.suppress, ood=args.ood,
                                        suppress_beta=args.suppress_beta,
                                        suppress_threshold=args.suppress_threshold, constrained=not args.no_constrained,
                                        max_boxes=args.max_boxes, max_new_tokens=args.max_new_tokens,
                                        batch_size=args.batch_size, **decoding)
                for (path, img), result in zip(loaded, results):
                    result = result.filter(args.threshold)
                    out.write(json.dumps({"image": path, **result.to_dict()}, ensure_ascii=False) + "\n")
                    if args.draw:
                        _save_drawing(img, result, path, args.draw)
                    done += 1
            progress.update(len(batch))
        progress.close()
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"rexomni detect: {done} images done, {skipped} skipped", file=sys.stderr)
    return 0 if done else 1


def _save_drawing(image, result, source: str, folder: str) -> None:
    from .draw import draw_result

    stem = os.path.splitext(os.path.basename(source.split("?")[0]))[0] or "image"
    draw_result(image, result).save(os.path.join(folder, f"{stem}.png"))


def model_main(argv: list[str] | None = None) -> int:
    parser = build_parser("model", "Create model checkpoints.")
    sub = parser.add_subparsers(dest="action", required=True)
    init = sub.add_parser("init", help="write a random-initialised checkpoint folder")
    init.add_argument("--preset", choices=("tiny", "small"), default="tiny")
    init.add_argument("--out", required=True, help="the folder to write")
    init.add_argument("--tokenizer", default=None, help="a tokenizer folder (default: the offline test tokenizer)")
    init.add_argument("--seed", type=int, default=0)
    grow = sub.add_parser("grow", help="double the layers of a checkpoint; it answers exactly as before")
    grow.add_argument("model", help="a checkpoint folder (or a short name such as rexomni-synth)")
    grow.add_argument("--out", required=True, help="the folder to write")
    grow.add_argument("--parts", nargs="+", choices=("language", "vision"), default=["language"],
                      help="what to deepen: the language model, the vision tower or both (default: language)")
    args = parser.parse_args(argv)

    from .modeling import grow_checkpoint, init_checkpoint, saved_parameter_count

    if os.path.isdir(args.out) and os.listdir(args.out):
        parser.error(f"--out {args.out!r} exists and is not empty")
    if args.action == "grow":
        folder = grow_checkpoint(args.model, args.out, parts=tuple(args.parts))
        print(f"rexomni model grow: wrote {args.model} with twice its {' and '.join(args.parts)} layers to {folder}")
        return 0
    folder = init_checkpoint(args.out, preset=args.preset, tokenizer=args.tokenizer, seed=args.seed)
    params = saved_parameter_count(folder)
    print(f"rexomni model init: wrote a random {args.preset} checkpoint ({params / 1e6:.1f}M parameters) to {folder}")
    return 0
