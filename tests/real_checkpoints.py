"""Checkpoint folders with the REAL Qwen2.5-VL tokenizer files and a shrunken Qwen2.5-VL-3B config.

``tests/fixtures/qwen2.5-vl-tokenizer/`` holds the real tokenizer, chat template and image-processor
files of Qwen2.5-VL and the real 3B ``config.json`` (its PROVENANCE.md says where each comes from).
From them:

- :func:`write_base`: a plain Qwen2.5-VL base: the real tokenizer files as released, the 3B config
  with tiny hidden sizes (vocab_size 151936, tied embeddings, the real token ids), random weights
  saved under the released checkpoints' parameter names.
- :func:`write_released`: the same in the layout of the released Rex-Omni: no ``tokenizer.json``,
  ``<0>``..``<999>`` declared at ids 150643..151642 (the last 1,000 BPE entries) in
  ``tokenizer_config.json``'s ``added_tokens_decoder``, no ``rexomni_config.json``.
"""

from __future__ import annotations

import json
import os
import shutil

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "qwen2.5-vl-tokenizer")
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "chat_template.json",
                   "preprocessor_config.json", "generation_config.json")
FIRST_COORD_ID = 150643  # the released Rex-Omni's <0>; <999> is 151642
BASE_VOCAB = 151665      # len() of the real Qwen2.5-VL tokenizer
EMBEDDING_ROWS = 151936  # vocab_size of the real config


def shrunken_3b_config() -> dict:
    """The real Qwen2.5-VL-3B config.json with tiny widths and depths; ids and vocabulary unchanged."""
    with open(os.path.join(FIXTURES, "config_3b.json")) as f:
        config = json.load(f)
    config.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1)
    config["rope_scaling"]["mrope_section"] = [2, 3, 3]  # sums to head_dim / 2 = 8
    config["vision_config"].update(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                                   fullatt_block_indexes=[1])
    return config


def write_weights(folder: str, config: dict, seed: int = 0) -> None:
    """Random weights for ``config`` in bf16, named as the released checkpoints name them
    (``model.layers.*``, ``visual.*``; the tied lm_head not stored)."""
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**config))
    tensors = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        name = name.replace("model.language_model.", "model.").replace("model.visual.", "visual.")
        tensors[name] = tensor.to(torch.bfloat16).contiguous()
    save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})


def write_base(folder: str, weights_from: str | None = None) -> str:
    """A plain Qwen2.5-VL base checkpoint folder (see the module docstring)."""
    os.makedirs(folder, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy(os.path.join(FIXTURES, name), folder)
    config = shrunken_3b_config()
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    if weights_from:
        shutil.copy(os.path.join(weights_from, "model.safetensors"), folder)
    else:
        write_weights(folder, config)
    return folder


def released_tokenizer_config() -> dict:
    """The real tokenizer_config.json with <0>..<999> declared over the last 1,000 BPE entries."""
    with open(os.path.join(FIXTURES, "tokenizer_config.json")) as f:
        config = json.load(f)
    declared = {str(FIRST_COORD_ID + b): {"content": f"<{b}>", "lstrip": False, "normalized": False,
                                           "rstrip": False, "single_word": False, "special": False}
                for b in range(1000)}
    declared.update(config["added_tokens_decoder"])
    config["added_tokens_decoder"] = dict(sorted(declared.items(), key=lambda item: int(item[0])))
    return config


def write_released(folder: str, weights_from: str | None = None) -> str:
    """The released Rex-Omni's layout on the shrunken model (see the module docstring)."""
    write_base(folder, weights_from)
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(released_tokenizer_config(), f, indent=2, ensure_ascii=False)
    return folder


def write_tokenizer_json_with_collisions(folder: str) -> None:
    """A ``tokenizer.json`` next to the released files as a transformers 4.x save would leave it: the
    BPE vocabulary untouched and ``<0>``..``<999>`` listed as added tokens AT 150643..151642, so two
    strings claim each of those ids."""
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(FIXTURES)
    state = json.loads(plain.backend_tokenizer.to_str())
    coords = [{"id": FIRST_COORD_ID + b, "content": f"<{b}>", "single_word": False, "lstrip": False, "rstrip": False,
               "normalized": False, "special": False} for b in range(1000)]
    state["added_tokens"] = sorted(coords + state["added_tokens"], key=lambda entry: entry["id"])
    with open(os.path.join(folder, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(state, f, ensure_ascii=False)
