"""``rexomni eval``: score a model on benchmarks, or a predictions file against annotations.

    rexomni eval [--model PATH] --benchmark SPEC.yaml [--out DIR] [--protocol strict|rexomni]
    rexomni eval --predictions PRED --annotations GT [--out metrics.json] [--task detection]
"""

from __future__ import annotations

import json
import logging
import sys

from .protocols import PROTOCOLS
from .scoring import DEFAULT_METRICS, TASK_METRICS


def build_parser():
    from rexomni.cli import build_parser as core_parser

    parser = core_parser("eval", "Score a model on benchmarks (--model, --benchmark) or a predictions file "
                                 "(--predictions, --annotations).")
    model = parser.add_argument_group("benchmark a model")
    model.add_argument("--model", help="checkpoint folder or hub id (default: the small model shipped with rexomni)")
    model.add_argument("--benchmark", help="benchmark spec YAML (see eval/benchmarks/)")
    model.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, ...")
    model.add_argument("--backend", default="transformers", choices=["transformers", "vllm"],
                       help="inference backend (vllm: GPU only)")
    model.add_argument("--batch-size", type=int, default=None, help="override the spec's batch size")
    model.add_argument("--limit", type=int, default=None, help="score only the first N samples of each data set")
    files = parser.add_argument_group("score a predictions file")
    files.add_argument("--predictions", help="COCO results JSON or the project's prediction JSONL")
    files.add_argument("--annotations", help="ground truth in any format the data readers know")
    files.add_argument("--format", default=None, help="annotation format (detected when left out)")
    files.add_argument("--task", default="detection", choices=sorted(DEFAULT_METRICS))
    files.add_argument("--metrics", default=None,
                       help=f"comma-separated metrics among {','.join(TASK_METRICS)} (default: the task's)")
    parser.add_argument("--protocol", default=None, choices=sorted(PROTOCOLS),
                        help="scoring protocol (default: the spec's, else strict)")
    parser.add_argument("--out", default=None,
                        help="output folder for --benchmark (default eval_out), JSON file for --predictions")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.predictions or args.annotations:
        if not (args.predictions and args.annotations):
            parser.error("--predictions and --annotations go together")
        if args.model or args.benchmark:
            parser.error("give either --model/--benchmark or --predictions/--annotations, not both")
        return _score_files(args)
    if not args.benchmark:
        parser.error("give --benchmark (and --model, else the shipped model), or --predictions and --annotations")
    return _benchmark(args)


def _score_files(args) -> int:
    from .runner import score_files

    metrics = args.metrics.split(",") if args.metrics else None
    try:
        result, _ = score_files(args.predictions, args.annotations, args.task, metrics,
                                args.protocol or "strict", args.format)
    except (FileNotFoundError, ValueError) as e:
        print(f"rexomni eval: {e}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=1, sort_keys=True)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    print(text)
    return 0


def _benchmark(args) -> int:
    from .report import markdown_table
    from .runner import BenchmarkSpec, run_benchmark

    try:
        spec = BenchmarkSpec.from_yaml(args.benchmark)
    except (FileNotFoundError, ValueError) as e:
        print(f"rexomni eval: {e}", file=sys.stderr)
        return 2
    if args.batch_size:
        spec.batch_size = args.batch_size
    if args.limit:
        for dataset in spec.datasets:
            dataset.limit = min(dataset.limit or args.limit, args.limit)
    from rexomni.api import RexOmni

    try:
        model = RexOmni.from_pretrained(args.model, device=args.device, backend=args.backend)
    except (OSError, ValueError) as e:  # a missing folder, an unreachable hub id, a bad device: one line
        print(f"rexomni eval: {e}", file=sys.stderr)
        return 2
    out = args.out or "eval_out"
    results = run_benchmark(model, spec, out, protocol=args.protocol, progress=not args.quiet)
    print(markdown_table(results))
    print(f"reports in {out}/ (results.json, results.md, plots/)", file=sys.stderr)
    return 0
