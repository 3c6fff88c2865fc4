"""How long the default model's path (scripts/train_default.sh) trains on this machine, without running it all.

    python bench/bench_path.py [--steps 400] [--threads 2] [--model rexomni-synth]

Each training stage of the path runs for ``--steps`` steps, as the script runs it (same config, same
flags), into a scratch folder, one stage at a time; its steps/s times the stage's steps in the path
gives the stage's minutes. The warm-up starts from random weights and stage 1 from that warm-up's
output; stages 2-5 start from ``--model`` (default: the shipped model, which has their shape). Not
counted: the held-out evaluations inside the stages and process start-ups (about 3 minutes in all).
Run it on an otherwise idle machine: a second job on the cores slows every stage (docs/recipe.md lists
both kinds of numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

# (name, the `rexomni` command as scripts/train_default.sh gives it, the stage's steps in that script).
# "{warmup}" is this bench's warm-up output and "{model}" the --model argument.
STAGES = [
    ("warm-up", ["warmup", "--config", "sft/configs/synth-warmup.yaml", "--model_name_or_path", "null",
                 "--preset", "tiny"], 3000),
    ("stage 1", ["sft", "--config", "sft/configs/synth-stage1.yaml", "--preset", "null",
                 "--model_name_or_path", "{warmup}"], 3000),
    ("stage 2", ["sft", "--config", "sft/configs/synth-stage2.yaml", "--model_name_or_path", "{model}"], 13000),
    ("stage 3", ["sft", "--config", "sft/configs/synth-stage3.yaml", "--model_name_or_path", "{model}"], 6000),
    ("stage 4", ["sft", "--config", "sft/configs/synth-stage4.yaml", "--model_name_or_path", "{model}"], 7000),
    ("stage 5", ["sft", "--config", "sft/configs/synth-stage5-search.yaml", "--model_name_or_path", "{model}"], 3000),
]


def stage_command(args: list[str], steps: int, output_dir: str) -> list[str]:
    """``args`` cut to ``steps`` steps in ``output_dir``: no checkpoints, no held-out scoring."""
    if args[0] == "warmup":  # the warm-up's schedule has no stop_at_step; its held-out scoring waits for step 500
        cut = ["--max_steps", str(steps)]
    else:  # keep the stage's own cosine, so each step costs what it costs in the path
        cut = ["--stop_at_step", str(steps), "--eval_examples", "0"]
    return [sys.executable, "-m", "rexomni.cli", *args, "--output_dir", output_dir, "--save_steps", "1000000", *cut]


def steps_per_second(log: str) -> float:
    """The steps/s of a finished run, from the JSON summary a `rexomni` training command prints last."""
    for line in reversed(log.splitlines()):
        if line.startswith("{") and '"train_runtime"' in line:
            summary = json.loads(line)
            return summary["global_step"] / summary["train"]["train_runtime"]
    raise ValueError("no training summary (a JSON line with train_runtime) in the log: the run failed?\n" + log[-2000:])


def projected_minutes(rate: float, steps: int) -> float:
    return steps / rate / 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400, help="steps each stage runs here")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of each stage")
    parser.add_argument("--model", default="rexomni-synth", help="start of stages 2-5 (4 language layers)")
    args = parser.parse_args()

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    rows, total = [], 0.0
    with tempfile.TemporaryDirectory(prefix="bench_path_") as scratch:
        fill = {"warmup": os.path.join(scratch, "warm-up"), "model": args.model}
        for name, stage_args, path_steps in STAGES:
            stage_args = [a.format(**fill) for a in stage_args]
            command = stage_command(stage_args, args.steps, os.path.join(scratch, name.replace(" ", "-")))
            print(f"{name}: rexomni {' '.join(command[3:])}", file=sys.stderr, flush=True)
            run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
            rate = steps_per_second(run.stdout + run.stderr)
            minutes = projected_minutes(rate, path_steps)
            total += minutes
            rows.append(f"| {name} | {rate:.2f} | {path_steps:,} | {minutes:.1f} |")
    print(f"{args.steps} steps per stage, {args.threads} thread(s)\n")
    print("| stage | steps/s | steps in the path | minutes |\n|---|---|---|---|")
    print("\n".join(rows))
    print(f"| all | | | **{total:.0f}** ({int(total // 60)} h {round(total % 60)} min) |")


if __name__ == "__main__":
    main()
