"""rexomni: detection by next-point prediction.

The core (codecs, output grammar, prompts, tokens) imports only numpy at import time; torch and
transformers are imported where a model is built or loaded.
"""

from .codec import CODECS, CoordCodec, get_codec
from .grammar import Item, ParsedOutput, format_answer, format_keypoints, parse_output
from .prompts import (
    ANIMAL_KEYPOINTS,
    HAND_KEYPOINTS,
    KEYPOINT_NAMES,
    PERSON_KEYPOINTS,
    SYSTEM_PROMPT,
    TEMPLATES,
    TRAIN_POOLS,
    build_messages,
    build_prompt,
    negative_conditioning,
    sample_template,
    visual_prompt_json,
)
from .tasks import TASKS, Task, get_task
from .tokens import TokenIds, decode_answer, grow_embeddings, prepare_tokenizer

__version__ = "0.1.0"

# Heavy names (torch, transformers) load on first use: `import rexomni` stays light.
_LAZY = {
    "RexOmni": "rexomni.api",
    "Result": "rexomni.result",
    "RexOmniSettings": "rexomni.modeling",
    "build_model": "rexomni.modeling",
    "init_checkpoint": "rexomni.modeling",
    "RexOmniProcessor": "rexomni.processing",
    "load_image": "rexomni.images",
    "ImageLoadError": "rexomni.images",
    "draw_result": "rexomni.draw",
}


# `transformers.pipeline("rex-omni", ...)` and AutoProcessor find our classes once transformers
# loads the modules concerned, without `import rexomni` importing transformers (see _hooks).
from ._hooks import install as _install_hooks  # noqa: E402

_install_hooks()


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rexomni' has no attribute {name!r}")


__all__ = [*_LAZY,
    "ANIMAL_KEYPOINTS", "CODECS", "CoordCodec", "HAND_KEYPOINTS", "Item", "KEYPOINT_NAMES", "PERSON_KEYPOINTS",
    "ParsedOutput", "SYSTEM_PROMPT", "TASKS", "TEMPLATES", "TRAIN_POOLS", "Task", "TokenIds", "build_messages",
    "build_prompt", "decode_answer", "format_answer", "format_keypoints", "get_codec", "get_task", "grow_embeddings",
    "negative_conditioning", "parse_output", "prepare_tokenizer", "sample_template", "visual_prompt_json",
]
