"""The offline tokenizer: a small byte-level BPE for from-scratch models and fast tests, built here.

The from-scratch presets (the shipped default model among them; ``rexomni model init`` without
``--tokenizer``) and the fast unit tests use a byte-level BPE trained in about a second on a
built-in corpus, so nothing is downloaded. It
has the real Qwen special tokens, spelled as Qwen spells them, the coordinate tokens ``<0>``..``<999>``
and the negative conditioning tokens, and the official Qwen2.5-VL chat template, so everything
downstream (processor, prompts, parser, training collators) runs exactly as with the real one.
"""

from __future__ import annotations

from .prompts import (
    ANIMAL_KEYPOINTS,
    HAND_KEYPOINTS,
    PERSON_KEYPOINTS,
    SYSTEM_PROMPT,
    TEMPLATES,
    TRAIN_POOLS,
)
from .tokens import prepare_tokenizer

# The Qwen2 special tokens, in the order of their ids in the released tokenizer. The first 14 are
# "special" (skipped by skip_special_tokens); the tool-call and fill-in-the-middle ones are not.
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
QWEN_PLAIN_ADDED_TOKENS = [
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
]
# Qwen2's pre-tokenizer split: contractions, letter runs, single digits, punctuation runs, spaces.
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_WORDS = """
person bicycle car motorcycle airplane bus train truck boat traffic light fire hydrant stop sign
parking meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella
handbag tie suitcase frisbee skis snowboard sports ball kite baseball bat glove skateboard
surfboard tennis racket bottle wine glass cup fork knife spoon bowl banana apple sandwich orange
broccoli carrot hot pizza donut cake chair couch potted plant bed dining table toilet tv laptop
mouse remote keyboard cell phone microwave oven toaster sink refrigerator book clock vase scissors
teddy hair drier toothbrush red green blue yellow white black purple orange gray box disk ring
square circle triangle star shape object word text line element button icon menu search login
statue toy painting reflection shadow photo drawing left right top bottom small large
"""


def training_corpus() -> list[str]:
    """Sentences in the register the model meets: prompts, categories, keypoint names, answers."""
    lines = [SYSTEM_PROMPT, " ".join(_WORDS.split())]
    for templates in TRAIN_POOLS.values():
        lines += [t.replace("{categories}", "person, dog").replace("{visual_prompt}", "boxes") for t in templates]
    lines += list(TEMPLATES.values())
    lines += [", ".join(PERSON_KEYPOINTS), ", ".join(ANIMAL_KEYPOINTS), ", ".join(HAND_KEYPOINTS)]
    lines += ['```json\n{"person1": {"bbox": " ", "keypoints": {"nose": "unvisible"}}}\n```', "None", ", ", ","]
    lines += [f"{i} {i * 7 % 1000}" for i in range(0, 1000, 7)]
    return lines * 4


def build_test_tokenizer(num_merges: int = 2000, num_bins: int = 1000):
    """A fast Qwen2-style tokenizer trained offline, made ready by :func:`rexomni.tokens.prepare_tokenizer`.

    ``padding_side`` is left (generation pads on the left); the pad token is ``<|endoftext|>`` and
    the end of a turn ``<|im_end|>``, as in Qwen2.5-VL-Instruct.
    """
    tokenizer = build_base_tokenizer(num_merges)
    prepare_tokenizer(tokenizer, num_bins=num_bins)
    return tokenizer


def build_base_tokenizer(num_merges: int = 2000):
    """Like :func:`build_test_tokenizer` but without coordinate and negative tokens: a stand-in for
    a plain Qwen2.5-VL base tokenizer."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from .processing import QWEN2_5_VL_CHAT_TEMPLATE

    backend = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=len(alphabet) + num_merges, initial_alphabet=alphabet,
                                  show_progress=False, special_tokens=[])
    backend.train_from_iterator(training_corpus(), trainer=trainer)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN_PLAIN_ADDED_TOKENS])

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="left",
        model_max_length=32768, clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = QWEN2_5_VL_CHAT_TEMPLATE
    return tokenizer
