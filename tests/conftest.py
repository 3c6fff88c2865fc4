"""Shared fixtures: an offline tokenizer and a saved random tiny checkpoint (no hub, no network)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def test_tokenizer():
    """The offline Qwen2-style tokenizer with <0>..<999> and the negative tokens (rexomni.offline_tokenizer)."""
    from rexomni.offline_tokenizer import build_test_tokenizer

    return build_test_tokenizer()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Path to a random-initialised ``tiny`` checkpoint folder, loadable with ``RexOmni.from_pretrained``."""
    from rexomni.modeling import init_checkpoint

    folder = tmp_path_factory.mktemp("tiny_checkpoint")
    return str(init_checkpoint(str(folder), preset="tiny", seed=0))


@pytest.fixture(scope="session")
def tiny_rexomni(tiny_checkpoint):
    """The tiny checkpoint loaded on CPU (shared; do not train it in place)."""
    from rexomni.api import RexOmni

    return RexOmni.from_pretrained(tiny_checkpoint, device="cpu")
