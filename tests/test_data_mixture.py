"""Mixtures: weights are honoured, the stream is seeded, counts are reported, bad specs are named."""

import json

import pytest
import yaml
from PIL import Image
from rexomni.data_engines.mixture import SYNTH_MIX as SPEC
from rexomni.data_engines.mixture import Mixture
from rexomni.data_engines.readers import write_samples

from rexomni.grammar import parse_output


def test_shipped_spec_streams_every_task_and_counts_them():
    mixture = Mixture.from_yaml(SPEC)
    examples = mixture.take(300)
    tasks = {e["task"] for e in examples}
    assert tasks == {"grounding", "referring", "pointing", "visual_prompting", "ocr_box", "ocr_polygon",
                     "keypoints", "gui_grounding", "gui_pointing"}
    assert sum(mixture.counts.values()) == 300
    assert mixture.counts == {t: sum(e["task"] == t for e in examples) for t in tasks}
    assert "300 examples" in mixture.report()
    for e in examples[:50]:
        assert isinstance(e["image"], Image.Image)
        assert not parse_output(e["answer"], e["width"], e["height"]).problems


def test_stream_is_seeded_and_workers_differ():
    a = [e["answer"] for e in Mixture.from_yaml(SPEC).take(20)]
    b = [e["answer"] for e in Mixture.from_yaml(SPEC).take(20)]
    c = [e["answer"] for e in Mixture.from_yaml(SPEC).take(20, seed=1)]
    assert a == b and a != c
    worker1 = Mixture.from_yaml(SPEC).stream(worker=1)
    assert [next(worker1)["answer"] for _ in range(20)] != a


def test_weights_shape_the_stream():
    spec = {"seed": 3, "sources": [
        {"name": "a", "synth": {"mode": "single", "size": 64}, "weight": 9, "tasks": {"grounding": 1}},
        {"name": "b", "synth": {"mode": "single", "size": 64}, "weight": 1, "tasks": {"pointing": 3, "grounding": 1}}]}
    mixture = Mixture(spec)
    mixture.take(400)
    assert 320 < mixture.source_counts["a"] < 390
    assert mixture.counts["pointing"] > 15


def test_file_source_with_negatives_and_skips(tmp_path):
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    samples = [{"image": "a.png", "width": 40, "height": 30,
                "objects": [{"phrase": "red car", "bbox": [1, 1, 20, 20]}]}]
    write_samples(samples, tmp_path / "s.jsonl")
    spec = {"sources": [{"name": "cars", "path": "s.jsonl", "tasks": {"grounding": 1, "keypoints": 1},
                         "negatives": {"k": 1, "prob": 1.0}}]}
    (tmp_path / "mix.yaml").write_text(yaml.safe_dump(spec))
    mixture = Mixture.from_yaml(str(tmp_path / "mix.yaml"))
    with pytest.raises(ValueError, match="keypoints"):  # no sample can ever serve keypoints
        mixture.take(20)
    spec["sources"][0]["tasks"] = {"grounding": 1}
    mixture = Mixture(spec, base_dir=str(tmp_path))
    for e in mixture.take(10):
        assert e["image"] == str(tmp_path / "a.png")
        assert "<|neg_ref_start|>" in e["prompt"] and e["phrases"] == ["red car"]
    assert json.dumps([e["prompt"] for e in mixture.take(3)])


@pytest.mark.parametrize("bad, message", [
    ({"sources": []}, "sources"),
    ({"sources": [{"name": "x", "tasks": {"grounding": 1}}]}, "synth"),
    ({"sources": [{"name": "x", "synth": {}, "tasks": {"dancing": 1}}]}, "dancing"),
    ({"sources": [{"name": "x", "synth": {}, "weight": 0}]}, "weight"),
])
def test_bad_specs_are_named(bad, message):
    with pytest.raises(ValueError, match=message):
        Mixture(bad)
