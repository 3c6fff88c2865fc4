"""The `rex-omni` transformers pipeline and what `import rexomni` registers."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest


def _image(seed=0, h=60, w=80):
    return np.random.RandomState(seed).randint(0, 255, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def detector(tiny_checkpoint):
    import transformers

    import rexomni  # noqa: F401

    return transformers.pipeline("rex-omni", model=tiny_checkpoint)


def test_pipeline_speaks_the_zero_shot_object_detection_schema(detector, tiny_rexomni):
    out = detector(_image(), candidate_labels=["dog", "cat"], max_new_tokens=30)
    assert isinstance(out, list) and len(out) >= 1
    for d in out:
        assert set(d) == {"score", "label", "box"} and set(d["box"]) == {"xmin", "ymin", "xmax", "ymax"}
        assert d["label"] in ("dog", "cat") and 0 <= d["score"] <= 1
        assert 0 <= d["box"]["xmin"] <= d["box"]["xmax"] <= 80
        assert all(type(v) is int for v in d["box"].values()), "integer pixels, as transformers' pipeline gives"
    # The same numbers as the API on the same checkpoint.
    api = tiny_rexomni.detect(_image(), ["dog", "cat"], max_new_tokens=30)
    assert sorted(d["score"] for d in out) == pytest.approx(sorted(api.scores.tolist()), rel=1e-4)


def test_pipeline_batches_lists_and_dict_inputs_with_threshold_and_top_k(detector):
    many = detector([_image(0), {"image": _image(1), "candidate_labels": ["cup"]}], candidate_labels="dog, cat",
                    max_new_tokens=40, top_k=1)
    assert len(many) == 2 and all(len(r) <= 1 for r in many)
    assert all(d["label"] == "cup" for d in many[1])
    assert detector(_image(), candidate_labels=["dog"], threshold=1.01, max_new_tokens=20) == []


def test_pipeline_needs_candidate_labels_except_for_detection(detector):
    with pytest.raises(ValueError, match="candidate_labels"):
        detector(_image(), task="pointing")
    assert all(set(d) == {"score", "label", "box"} for d in detector(_image(), max_new_tokens=20))  # detect_all


def test_import_rexomni_stays_light_and_registers_on_first_use(tiny_checkpoint):
    """In a fresh interpreter: no torch at import; the pipeline and AutoProcessor work afterwards."""
    code = f"""
import json, sys
import rexomni
light = "torch" not in sys.modules and "transformers" not in sys.modules
from transformers import AutoProcessor, pipeline
processor = AutoProcessor.from_pretrained({tiny_checkpoint!r})
detector = pipeline("rex-omni", model={tiny_checkpoint!r})
print(json.dumps({{"light": light, "processor": type(processor).__name__, "pipeline": type(detector).__name__}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {"light": True, "processor": "RexOmniProcessor", "pipeline": "RexOmniPipeline"}
