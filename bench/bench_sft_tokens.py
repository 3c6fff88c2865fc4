"""What an SFT step spends on tokens it does not learn from: padding, and logits nobody reads.

    python bench/bench_sft_tokens.py [--config sft/configs/synth-stage2.yaml] [--model rexomni-synth]
                                     [--batches 24] [--rounds 3] [--threads 1]

The same batches of the config's data (drawn and encoded once, held in memory) are trained on by the
same model in three ways, in one process, the arms taking turns over ``--rounds`` so that a load on
the machine falls on all of them alike:

- ``baseline``: batches as drawn, logits at every position;
- ``logits``: batches as drawn, logits only where the loss reads them (``predicting_positions``);
- ``logits+grouped``: also batches of about one length (``LengthGroupedDataset``, the config's window).

Each step is a forward, a backward and an AdamW step (the Trainer around it is the same for all arms
and left out). Reported: samples/s, padded tokens per real token, and the ratios to the baseline.
"""

from __future__ import annotations

import argparse
import time

import torch


def encoded_items(config_path: str, model: str, num_batches: int):
    from rexomni.sft.config import load_config
    from rexomni.sft.data import ExampleEncoder
    from rexomni.sft.model_setup import load_model
    from rexomni.sft.trainer import build_datasets

    config = load_config(config_path, {"eval_examples": 0, "model_name_or_path": model, "group_by_length": False})
    bundle = load_model(config.model_args, seed=config.seed, bf16=False)
    encoder = ExampleEncoder(bundle.processor, config.system_prompt, config.max_length)
    dataset, _ = build_datasets(config, encoder)
    return config, bundle, [dataset[i] for i in range(num_batches * config.per_device_train_batch_size)]


def batches(items, collator, batch_size: int, window: int | None):
    from rexomni.sft.data import LengthGroupedDataset

    data = items if window is None else LengthGroupedDataset(items, batch_size, window, seed="bench")
    return [collator([data[i] for i in range(j, j + batch_size)]) for j in range(0, len(items), batch_size)]


def train_steps(model, optimizer, batches, keep_logits: bool) -> float:
    from rexomni.sft.losses import CausalLMLoss, predicting_positions

    loss_fn = CausalLMLoss()
    start = time.perf_counter()
    for batch in batches:
        inputs = {k: v for k, v in batch.items() if k != "expected_label_tokens"}
        labels = inputs.pop("labels")
        if keep_logits:
            inputs["logits_to_keep"] = predicting_positions(labels)
        num_items = batch.get("expected_label_tokens")
        loss_fn(model(**inputs).logits, labels, num_items).backward()
        optimizer.step()
        optimizer.zero_grad()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="sft/configs/synth-stage2.yaml")
    parser.add_argument("--model", default="rexomni-synth")
    parser.add_argument("--batches", type=int, default=24, help="batches per arm and round (a multiple of the window)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from rexomni.sft.data import SFTCollator

    config, bundle, items = encoded_items(args.config, args.model, args.batches)
    size = config.per_device_train_batch_size
    collator = SFTCollator(bundle.processor.tokenizer.pad_token_id, bundle.model.config.image_token_id)
    arms = {"baseline": (batches(items, collator, size, None), False),
            "logits": (batches(items, collator, size, None), True),
            "logits+grouped": (batches(items, collator, size, config.length_group_window), True)}
    model = bundle.model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    train_steps(model, optimizer, arms["baseline"][0][:2], False)  # warm-up, not timed
    seconds = dict.fromkeys(arms, 0.0)
    for _ in range(args.rounds):
        for name, (arm_batches, keep) in arms.items():
            seconds[name] += train_steps(model, optimizer, arm_batches, keep)

    real = sum(len(item["input_ids"]) for item in items)
    samples = args.batches * size * args.rounds
    print(f"{args.config}, model {args.model}, batch {size}, {args.batches} batches x {args.rounds} rounds, "
          f"{args.threads} thread(s)")
    print(f"{'':<16}{'samples/s':>10}{'padded/real tokens':>20}{'speed-up':>10}")
    for name, (arm_batches, _) in arms.items():
        padded = sum(b["input_ids"].numel() for b in arm_batches)
        print(f"{name:<16}{samples / seconds[name]:>10.1f}{padded / real:>20.2f}"
              f"{seconds['baseline'] / seconds[name]:>9.2f}x")


if __name__ == "__main__":
    main()
