"""Loading a checkpoint: the one path that the API, the pipeline, SFT and GRPO all take.

    checkpoint = load_checkpoint("IDEA-Research/Rex-Omni")     # or a local folder
    checkpoint.model, checkpoint.processor, checkpoint.settings, checkpoint.token_ids, checkpoint.kind

The rule, in this order:

1. **Tokenizer**, with every added token at the id that the folder's ``tokenizer_config.json``
   declares (:func:`load_tokenizer`). The released Rex-Omni keeps Qwen2.5-VL's ``vocab.json`` and
   ``merges.txt`` and repurposes the last 1,000 BPE entries, ids 150643..151642, for ``<0>``..``<999>``
   through ``added_tokens_decoder``. transformers 5 numbers such added tokens after the vocabulary
   instead (``<0>`` 151643, ``<|image_pad|>`` 152655), which would feed the model prompts without
   image tokens and read every coordinate it writes as the wrong one. The declared ids are
   restored, or loading stops naming the file and the first id it could not keep; never a silent shift.
2. **Settings**, never guessed (:func:`resolve_settings`): the folder's ``rexomni_config.json`` if it
   has one ("project"); else a tokenizer that already holds ``<0>``..``<999>`` is the released
   Rex-Omni ("released": codec ``rexomni``, the released generation settings); else a plain
   Qwen2.5-VL base ("base").
3. **Tokens**: :func:`rexomni.tokens.prepare_tokenizer` adds what is missing (the coordinate tokens
   of a base, the four negative tokens) after every existing id, so no released id moves.
4. **Embeddings** grow to hold the added tokens (never shrink), new rows initialised.
5. **Processor**: the torchvision-free one, with the checkpoint's image limits and chat template.

Local folders and hub ids are both accepted; ``trust_remote_code`` is never used.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from typing import Any

from .modeling import SETTINGS_FILE, RexOmniSettings
from .processing import QWEN2_5_VL_CHAT_TEMPLATE, RELEASED_MAX_PIXELS, RELEASED_MIN_PIXELS, RexOmniProcessor
from .tokens import IMAGE_PAD, NUM_BINS, VISION_END, VISION_START, TokenIds, coord_tokens, prepare_tokenizer

# The model shipped in the package (trained by the project's own recipe on synthetic scenes; its
# README is the model card), loaded when no model is named.
DEFAULT_MODEL = "rexomni-synth"
DEFAULT_MODEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default_model")
# What the released IDEA-Research/Rex-Omni wrapper generates with.
RELEASED_GENERATION = {"repetition_penalty": 1.05, "max_new_tokens": 4096}
# Tokenizer constructor arguments that name the files of the original backend: a rebuilt backend replaces them.
_BACKEND_FILE_KWARGS = ("vocab", "merges", "vocab_file", "merges_file", "tokenizer_file", "added_tokens_decoder")
# Token ids the model's config records, and the token each must be in the tokenizer.
CONFIG_TOKEN_IDS = {"image_token_id": IMAGE_PAD, "vision_start_token_id": VISION_START,
                    "vision_end_token_id": VISION_END}


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``model`` is None when only the tokenizer side was asked for."""

    model: Any
    processor: RexOmniProcessor
    settings: RexOmniSettings
    token_ids: TokenIds
    kind: str  # "project", "released" or "base"
    source: str

    @property
    def tokenizer(self):
        return self.processor.tokenizer


def load_checkpoint(path: str | None = None, *, model=None, load_model: bool = True, dtype=None,
                    attn_implementation: str = "sdpa", base_codec: str = "center") -> Checkpoint:
    """Tokenizer, settings, tokens, model and processor of a checkpoint folder or hub id (None or
    ``"rexomni-synth"``: the shipped default model).

    ``model``: an already loaded model of this checkpoint (the pipeline's) to make ready instead of
    loading one; ``load_model=False`` skips the weights (vLLM loads its own). ``dtype`` defaults to
    float32. ``base_codec`` is the codec given to a plain Qwen2.5-VL base, which records none.
    """
    path = resolve_model(path)
    tokenizer = load_tokenizer(path)
    settings, kind = resolve_settings(path, tokenizer, base_codec=base_codec)
    token_ids = prepare_tokenizer(tokenizer, num_bins=settings.num_bins)
    processor = load_processor(path, tokenizer, settings)
    if model is None and load_model:
        import torch
        from transformers import Qwen2_5_VLForConditionalGeneration

        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            path, dtype=dtype or torch.float32, attn_implementation=attn_implementation, use_safetensors=True)
    if model is not None:
        check_config_token_ids(model.config, tokenizer, path)
        if kind == "base" or token_ids.added:
            from .tokens import grow_embeddings

            grow_embeddings(model, tokenizer, token_ids)  # also under ZeRO-3 (gathers the matrices)
    return Checkpoint(model, processor, settings, token_ids, kind, path)


# --------------------------------------------------------------------------- where the files are


def resolve_model(path: str | None) -> str:
    """The folder or hub id to load: the shipped default for None or its name, else ``path`` checked
    by :func:`check_source`."""
    if path is None or str(path) == DEFAULT_MODEL:
        if not os.path.isfile(os.path.join(DEFAULT_MODEL_DIR, "config.json")):
            raise FileNotFoundError(f"the default model is missing from {DEFAULT_MODEL_DIR}; reinstall rexomni")
        return DEFAULT_MODEL_DIR
    path = str(path)
    check_source(path)
    return path


def check_source(path: str) -> None:
    """Fail at once on a string that means a local folder that is not there.

    A hub id is ``owner/name``; anything else that does not exist (``./x``, ``runs/typo`` when
    ``runs/`` is a local folder, ``a/b/c``, ``~/x``) would otherwise go to the hub and fail there
    after a minute of retries with a message about the network.
    """
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise ValueError(f"{path}: a checkpoint is a folder (config.json, safetensors, tokenizer files), "
                             "not a file")
        return
    parts = path.split("/")
    looks_local = (path.startswith((".", "/", "~")) or len(parts) != 2 or not all(parts)
                   or os.path.isdir(parts[0]))
    if looks_local:
        raise FileNotFoundError(f"{path}: no such checkpoint folder")
    _check_hub(path)


def _check_hub(repo_id: str) -> None:
    """A hub id neither cached nor reachable fails now, in one line: the hub client would retry for
    about a minute before saying it cannot connect."""
    import urllib.error
    import urllib.request

    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE or isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return
    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=5)
    except urllib.error.HTTPError:
        return  # the hub answered
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise OSError(f"{repo_id}: not a local folder, and the hub ({constants.ENDPOINT}) cannot be reached "
                      f"({reason}). Give the path of a local checkpoint folder.") from None


def find_file(path: str, name: str) -> str | None:
    """``name`` inside a checkpoint folder or hub repository, or None when it has none."""
    if os.path.isdir(path):
        candidate = os.path.join(path, name)
        return candidate if os.path.isfile(candidate) else None
    from transformers.utils import cached_file

    try:
        return cached_file(path, name, _raise_exceptions_for_missing_entries=False)
    except OSError as e:
        raise OSError(f"{path}: not a local folder, and the hub could not be reached for it ({_first_line(e)}). "
                      "Give the path of a local checkpoint folder.") from None


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


# --------------------------------------------------------------------------- tokenizer


def load_tokenizer(path: str):
    """The checkpoint's tokenizer, left-padded, with every added token at its declared id.

    ``tokenizer_config.json`` declares ids in ``added_tokens_decoder``. Where the loaded tokenizer
    has a token elsewhere (transformers 5 renumbers added tokens whose declared ids fall inside the
    BPE vocabulary), the BPE entries at those ids are renamed to the added tokens and the merges
    that built the old entries dropped, so each added token is the single token at its declared id
    (the old entries, rare symbols such as "∉", then spell as bytes). Raises ``ValueError`` naming
    the file and the first id it could not keep.
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as e:
        hint = "" if os.path.isdir(path) else " Give the path of a local checkpoint folder, or check the hub id."
        raise OSError(f"{path}: cannot load its tokenizer ({_first_line(e)}).{hint}") from None
    config_file = find_file(path, "tokenizer_config.json")
    if config_file is not None:
        declared = declared_added_tokens(config_file)
        if any(tokenizer.convert_tokens_to_ids(token) != i for i, token in declared.items()):
            tokenizer = _place_added_tokens(tokenizer, declared, config_file)
    tokenizer.padding_side = "left"  # generation pads on the left
    return tokenizer


def declared_added_tokens(config_file: str) -> dict[int, str]:
    """id -> token content from a ``tokenizer_config.json``'s ``added_tokens_decoder``."""
    try:
        with open(config_file, encoding="utf-8") as f:
            entries = json.load(f).get("added_tokens_decoder") or {}
        return {int(i): entry["content"] for i, entry in entries.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{config_file}: cannot read added_tokens_decoder ({e})") from None


def _place_added_tokens(tokenizer, declared: dict[int, str], source: str):
    """A copy of ``tokenizer`` whose backend puts each declared token at its id (see :func:`load_tokenizer`)."""
    from tokenizers import Tokenizer

    state = json.loads(tokenizer.backend_tokenizer.to_str())
    model = state["model"]
    if model.get("type") == "BPE":
        vocab = model["vocab"]
        entry_at = {i: token for token, i in vocab.items()}
        renamed = {entry_at[i]: token for i, token in declared.items() if entry_at.get(i, token) != token}
        for old, new in renamed.items():
            vocab[new] = vocab.pop(old)
        model["merges"] = [m for m in model["merges"] if not _merge_touches(m, renamed)]
        declared_id = {token: i for i, token in declared.items()}
        for entry in state["added_tokens"]:
            entry["id"] = declared_id.get(entry["content"], entry["id"])
        # Added tokens beyond the vocabulary are numbered in list order: keep the list in id order.
        state["added_tokens"].sort(key=lambda entry: entry["id"])
        kwargs = {k: v for k, v in tokenizer.init_kwargs.items() if k not in _BACKEND_FILE_KWARGS}
        tokenizer = type(tokenizer)(tokenizer_object=Tokenizer.from_str(json.dumps(state)), **kwargs)
    for i, token in sorted(declared.items()):
        got = tokenizer.convert_tokens_to_ids(token)
        if got != i:
            raise ValueError(f"{source}: added token {token!r} is declared at id {i}, but the tokenizer puts it at "
                             f"{got} and it could not be moved back ({model.get('type')} backend); refusing to load "
                             "with shifted token ids")
    return tokenizer


def _merge_touches(merge, tokens: dict[str, str]) -> bool:
    """Whether a BPE merge (``[a, b]`` or ``"a b"``) uses or produces one of ``tokens``."""
    left, right = merge if isinstance(merge, (list, tuple)) else merge.split(" ", 1)
    return left in tokens or right in tokens or left + right in tokens


def check_config_token_ids(config, tokenizer, source: str) -> None:
    """The model's config and the tokenizer must agree on the image and vision token ids."""
    for attr, token in CONFIG_TOKEN_IDS.items():
        expected = getattr(config, attr, None)
        actual = tokenizer.convert_tokens_to_ids(token)
        if expected is not None and actual != expected:
            raise ValueError(f"{source}: the model's config has {attr} = {expected}, but the tokenizer puts {token} "
                             f"at id {actual}; the tokenizer files do not belong to this model")


# --------------------------------------------------------------------------- settings and processor


def resolve_settings(path: str, tokenizer, base_codec: str = "center") -> tuple[RexOmniSettings, str]:
    """(settings, kind), kind being "project" (settings file found), "released" or "base" (module docstring)."""
    settings_file = find_file(path, SETTINGS_FILE)
    if settings_file is not None:
        return RexOmniSettings.load(settings_file), "project"
    vocab = tokenizer.get_vocab()
    if all(t in vocab for t in coord_tokens(NUM_BINS)):
        return RexOmniSettings(coord_codec="rexomni", min_pixels=RELEASED_MIN_PIXELS, max_pixels=RELEASED_MAX_PIXELS,
                               generation=dict(RELEASED_GENERATION)), "released"
    warnings.warn(f"{path}: no {SETTINGS_FILE} and no coordinate tokens: a plain Qwen2.5-VL base; adding "
                  f"<0>..<999> with new embeddings and the {base_codec!r} codec. It needs training before it detects.",
                  stacklevel=3)
    return RexOmniSettings(coord_codec=base_codec), "base"


def load_processor(path: str, tokenizer, settings: RexOmniSettings) -> RexOmniProcessor:
    """The torchvision-free processor with the checkpoint's image limits and chat template."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    size = {"shortest_edge": settings.min_pixels, "longest_edge": settings.max_pixels}
    try:
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(path, size=size)
    except OSError:
        image_processor = Qwen2VLImageProcessorPil(size=size)
    chat_template = getattr(tokenizer, "chat_template", None) or QWEN2_5_VL_CHAT_TEMPLATE
    return RexOmniProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template)
