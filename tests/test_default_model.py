"""The model shipped in the package (rexomni/default_model): loaded when no model is named, and it localises."""

from __future__ import annotations

import json
import os

import pytest

from rexomni.checkpoint import DEFAULT_MODEL_DIR

SCENE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "scene4.png")


@pytest.fixture(scope="module")
def default_model():
    from rexomni.api import RexOmni

    return RexOmni.from_pretrained(device="cpu")


def test_no_model_or_its_name_loads_the_shipped_folder(default_model):
    from rexomni.api import RexOmni

    assert default_model.name == DEFAULT_MODEL_DIR and default_model.settings.coord_codec == "center"
    assert RexOmni.from_pretrained("rexomni-synth", device="cpu").name == DEFAULT_MODEL_DIR


def test_the_shipped_model_localises_shapes_it_has_never_seen(default_model):
    """Unseen one-shape scenes (a seed training never drew), each asked its shape's name."""
    from rexomni.eval.runner import DatasetSpec, evaluate_samples, synth_samples

    samples = synth_samples({"mode": "single", "size": 224, "sizes": ["medium", "large"], "num_objects": [1, 1],
                             "n": 24, "seed": 424242})
    spec = DatasetSpec(name="single", task="referring", ask="present", metrics=["f1", "referring"])
    metrics, _ = evaluate_samples(default_model, samples, spec, batch_size=8, progress=False)
    assert metrics["f1@0.5"] >= 0.8 and metrics["mean_iou"] >= 0.6, metrics


def test_the_shipped_model_answers_a_crowded_scenes_category_list(default_model):
    """Unseen scenes of one to four shapes with look-alikes, every category asked (present shapes and
    absent look-alikes, as the benchmark's detection asks): boxes for the first, None for the second."""
    from rexomni.eval.runner import DatasetSpec, evaluate_samples, synth_samples

    samples = synth_samples({"mode": "single", "size": 224, "sizes": ["medium", "large"], "num_objects": [1, 4],
                             "distractors": True, "n": 16, "seed": 515151})
    spec = DatasetSpec(name="lists", task="detection", ask="categories", metrics=["f1"])
    metrics, _ = evaluate_samples(default_model, samples, spec, batch_size=8, progress=False)
    assert metrics["f1@0.5"] >= 0.75 and metrics["absent/fp_rate"] <= 0.15, metrics


def test_cli_and_pipeline_default_to_the_shipped_model(tmp_path):
    import transformers

    import rexomni  # noqa: F401  (registers the pipeline)
    from rexomni.cli import main

    out = tmp_path / "d.jsonl"
    assert main(["detect", SCENE, "--categories", "red circle,blue square", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["width"] == 224
    detector = transformers.pipeline("rex-omni")
    assert isinstance(detector(SCENE, candidate_labels=["red circle"]), list)
