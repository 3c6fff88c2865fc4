"""Training throughput and peak memory: this project's SFT against TRL's SFTTrainer with its defaults.

    python bench/bench_sft.py [--steps 60] [--warmup 10] [--batch 16] [--examples 256]

One run measures both, each in its own child process (so peak memory is its own): the same tiny
model (preset ``tiny``, same seed), the same examples (scenes of sft/configs/tiny.yaml, drawn once
and held in memory) and the same batch size and steps. Ours: the hand-built tensor pipeline, the
project's collator and loss, ``RexOmniSFTTrainer``. TRL: ``SFTTrainer`` given ``{"images",
"messages"}`` rows and the processor, every other setting at TRL's default (its collator calls the
processor per batch). Reported: samples/s after ``--warmup`` steps, the ratio, and peak memory
(resident set size on CPU, peak allocated on a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

TINY_YAML = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sft", "configs", "tiny.yaml")


def examples(n: int) -> list[dict]:
    from rexomni.sft.config import load_config
    from rexomni.sft.trainer import build_datasets

    config = load_config(TINY_YAML, {"eval_examples": 0})
    dataset, _ = build_datasets(config, None)
    return [dataset.example(i) for i in range(n)]


class Timer:
    """A Trainer callback: wall time between the end of step ``warmup`` and the last step."""

    def __init__(self, warmup: int):
        from transformers import TrainerCallback

        timer = self

        class _Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == warmup:
                    timer.start = time.perf_counter()
                timer.end, timer.steps = time.perf_counter(), state.global_step

        self.callback, self.start, self.end, self.steps, self.warmup = _Callback(), None, None, 0, warmup

    def samples_per_s(self, batch: int) -> float:
        return (self.steps - self.warmup) * batch / (self.end - self.start)


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def run_ours(args, data, out: str) -> dict:
    import torch
    from rexomni.sft.config import load_config
    from rexomni.sft.data import ExampleEncoder, SFTCollator
    from rexomni.sft.model_setup import load_model, prepare_model
    from rexomni.sft.trainer import RexOmniSFTTrainer

    config = load_config(TINY_YAML, {"output_dir": out, "max_steps": args.steps, "per_device_train_batch_size":
                                     args.batch, "eval_examples": 0, "save_steps": 10**9, "report_to": "none",
                                     "disable_tqdm": True, "logging_steps": 10**9})
    bundle = load_model(config.model_args, seed=config.seed, bf16=config.bf16)
    encoder = ExampleEncoder(bundle.processor, config.system_prompt, config.max_length)

    class Encoded(torch.utils.data.Dataset):
        def __len__(self):
            return len(data)

        def __getitem__(self, i):
            return encoder.encode(data[i])

    timer = Timer(args.warmup)
    trainer = RexOmniSFTTrainer(model=prepare_model(bundle, config.model_args), args=config, train_dataset=Encoded(),
                                data_collator=SFTCollator(encoder.pad_id, encoder.image_token_id),
                                processing_class=bundle.processor, bundle=bundle, callbacks=[timer.callback])
    trainer.train()
    return {"samples_per_s": timer.samples_per_s(args.batch)}


def run_trl(args, data, out: str) -> dict:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from rexomni.modeling import build_model, preset_settings
    from rexomni.offline_tokenizer import build_test_tokenizer
    from rexomni.processing import make_processor
    from rexomni.prompts import SYSTEM_PROMPT

    tokenizer = build_test_tokenizer()
    model = build_model("tiny", tokenizer, seed=0)
    settings = preset_settings("tiny")
    processor = make_processor(tokenizer, settings.min_pixels, settings.max_pixels)
    rows = [{"images": [e["image"]],
             "messages": [{"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
                          {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": e["prompt"]}]},
                          {"role": "assistant", "content": [{"type": "text", "text": e["answer"]}]}]}
             for e in data]
    import torch

    # Only what defines the workload is set; everything else is TRL's default, except bf16 (TRL's
    # default True is refused by transformers on a machine without a bf16 GPU).
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    config = SFTConfig(output_dir=out, max_steps=args.steps, per_device_train_batch_size=args.batch,
                       report_to=[], save_strategy="no", logging_steps=10**9, disable_tqdm=True, bf16=bf16)
    timer = Timer(args.warmup)
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=processor,
                         callbacks=[timer.callback])
    trainer.train()
    defaults = {k: getattr(config, k) for k in ("learning_rate", "bf16", "gradient_checkpointing",
                                                "assistant_only_loss", "completion_only_loss", "max_length")}
    return {"samples_per_s": timer.samples_per_s(args.batch), "trl_defaults": defaults}


def child(args) -> None:
    data = examples(args.examples)
    base = peak_memory_mb()
    with tempfile.TemporaryDirectory() as out:
        result = (run_ours if args.child == "ours" else run_trl)(args, data, out)
    result.update({"peak_mb": round(peak_memory_mb(), 1), "peak_before_training_mb": round(base, 1)})
    print("RESULT " + json.dumps(result, default=str), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10, help="steps excluded from the timing")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--examples", type=int, default=256, help="distinct examples (cycled over the steps)")
    parser.add_argument("--child", choices=("ours", "trl"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    results = {}
    for name in ("ours", "trl"):
        command = [sys.executable, __file__, "--child", name, "--steps", str(args.steps), "--warmup",
                   str(args.warmup), "--batch", str(args.batch), "--examples", str(args.examples)]
        proc = subprocess.run(command, capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            sys.exit(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        results[name] = json.loads(line[7:])
    ours, trl = results["ours"], results["trl"]
    print(f"tiny preset, batch {args.batch}, {args.steps} steps ({args.warmup} warm-up steps not timed)")
    print(f"{'':<22}{'samples/s':>10}{'peak MB':>10}{'MB before training':>20}")
    for name, r in results.items():
        print(f"{name:<22}{r['samples_per_s']:>10.1f}{r['peak_mb']:>10.0f}{r['peak_before_training_mb']:>20.0f}")
    print(f"ratio ours / TRL: {ours['samples_per_s'] / trl['samples_per_s']:.2f}x samples/s, "
          f"{ours['peak_mb'] / trl['peak_mb']:.2f}x peak memory")
    print(f"TRL defaults in effect: {trl.get('trl_defaults')}")


if __name__ == "__main__":
    main()
