#!/usr/bin/env bash
# The main job on one CPU machine: set up, then detect with the model shipped in the package on the
# example scenes and on unseen scenes, draw what it found, and score it on the held-out benchmark.
# Everything lands in runs/quickstart/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh eval
export PATH="$PWD/.venv/bin:$PATH"
out=runs/quickstart
categories="red circle,blue square,yellow star,green triangle"

echo "== 1/4 detect in the example scenes with the shipped model (rexomni-synth) and draw"
rexomni detect examples/*.png --categories "$categories" --out "$out/examples.jsonl" --draw "$out/drawn"

echo "== 2/4 score those detections against the examples' ground truth"
rexomni eval --predictions "$out/examples.jsonl" --annotations examples/samples.jsonl --out "$out/examples_metrics.json" \
    > /dev/null

echo "== 3/4 four scenes the model has never seen (the held-out benchmark's first ones), drawn"
rexomni data synth --n 4 --seed 20261201 --mode single --size 224 --sizes medium large --objects 1 4 \
    --out "$out/unseen" > /dev/null
python - "$out/unseen/samples.jsonl" > "$out/unseen/categories.txt" <<'PY'
import json, sys
print(",".join(sorted({o["phrase"] for line in open(sys.argv[1]) for o in json.loads(line)["objects"]})))
PY
rexomni detect "$out"/unseen/images/*.png --categories "$(cat "$out/unseen/categories.txt")" \
    --out "$out/unseen.jsonl" --draw "$out/drawn"

echo "== 4/4 the held-out benchmark, its first 64 scenes per task (detection, referring, pointing; pointing asked category lists)"
rexomni eval --benchmark eval/benchmarks/synth_heldout.yaml --limit 64 --out "$out/eval" --quiet > /dev/null

echo
python - "$out/examples_metrics.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
print(f"example scenes: F1@0.5 {m['f1@0.5']:.2f}, mean IoU {m['mean_iou']:.2f} over {int(m['samples'])} images")
PY
cat "$out/eval/results.md"
echo "Drawings: $out/drawn/   detections: $out/examples.jsonl, $out/unseen.jsonl   benchmark: $out/eval/"
echo "Train your own in about ten minutes: rexomni demo train   (docs/training.md)"
