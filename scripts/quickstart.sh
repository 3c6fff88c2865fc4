#!/usr/bin/env bash
# The main job on one CPU machine: set up, train the tiny detector on synthetic scenes, then detect,
# draw and score on scenes it has never seen. Everything lands in runs/quickstart/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh train,eval
export PATH="$PWD/.venv/bin:$PATH"
out=runs/quickstart

echo "== 1/4 train the tiny preset from random weights (about a minute)"
rexomni sft --config sft/configs/tiny.yaml --output_dir "$out/model"

echo "== 2/4 held-out scenes, drawn with another seed"
rexomni data synth --n 64 --mode single --size 112 --seed 20261121 --out "$out/heldout"

echo "== 3/4 score the model on them"
cat > "$out/heldout.yaml" <<SPEC
name: quickstart-heldout
datasets:
  - name: heldout
    annotations: heldout/samples.jsonl
    format: jsonl
    task: referring
    ask: present
SPEC
rexomni eval --model "$out/model" --benchmark "$out/heldout.yaml" --out "$out/eval"

echo "== 4/4 detect in one held-out image and draw the boxes"
image=$(ls "$out"/heldout/images/* | head -n 1)
phrase=$(head -n 1 "$out/heldout/samples.jsonl" | python3 -c 'import json, sys; print(json.load(sys.stdin)["objects"][0]["phrase"])')
rexomni detect "$image" --categories "$phrase" --model "$out/model" --out "$out/detections.jsonl" --draw "$out/drawn"

echo
cat "$out/eval/results.md"
echo "Checkpoint: $out/model   detections: $out/detections.jsonl   drawn: $out/drawn/   metrics: $out/eval/"
