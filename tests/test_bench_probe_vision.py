"""bench/probe_vision.py: the linear probe scores what features hold, and both probes run end to end."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import torch

PATH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "probe_vision.py"
spec = importlib.util.spec_from_file_location("probe_vision", PATH)
probe_vision = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe_vision)


def test_linear_probe_reads_a_class_the_features_hold_and_not_one_they_do_not():
    torch.manual_seed(0)
    targets = torch.randint(0, 8, (400,))
    informative = torch.nn.functional.one_hot(targets, 8).float() + 0.1 * torch.randn(400, 8)
    assert probe_vision.linear_probe(informative, targets, 8) > 0.95
    assert probe_vision.linear_probe(torch.randn(400, 8), targets, 8) < 0.4


def test_image_tokens_give_one_feature_per_scene(tiny_rexomni):
    scenes = probe_vision.benchmark_scenes(5, seed=3)
    features = probe_vision.image_tokens(tiny_rexomni, scenes)
    width = tiny_rexomni.model.config.text_config.hidden_size
    assert features.shape == (5, 2 * width)
    kinds, colours = probe_vision.labels(scenes)
    assert kinds.max() < len(probe_vision.KINDS) and colours.max() < len(probe_vision.COLOURS)


def test_learn_trains_a_fresh_tower(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["probe_vision.py", "learn", "--steps", "2", "--eval-every", "2",
                                      "--batch", "4", "--width", "32"])
    probe_vision.main()
    out = capsys.readouterr().out
    assert "width 32" in out and "step 2: loss" in out


def test_names_checks_the_colour_and_the_kind_written_on_each_shape(tmp_path, monkeypatch, capsys):
    import json

    from rexomni.eval.runner import synth_samples

    scenes = dict(mode="single", size=224, sizes=["large"], num_objects=[1, 1], distractors=False, n=4, seed=5)
    (tmp_path / "spec.yaml").write_text(json.dumps({"datasets": [{"name": "detect-all", "task": "detect_all",
                                                                   "synth": scenes}]}))
    rows = []
    for i, scene in enumerate(synth_samples(scenes)):
        shape = scene["objects"][0]["attributes"]
        other_kind = next(k for k in probe_vision.KINDS if k != shape["kind"])
        # Scenes 0 and 1 named right, 2 with the wrong kind, 3's box off the shape.
        label = f"{shape['color']} {other_kind if i == 2 else shape['kind']}"
        box = [0, 0, 1, 1] if i == 3 else scene["objects"][0]["bbox"]
        rows.append(json.dumps({"key": scene["key"], "boxes": [box], "labels": [label]}))
    (tmp_path / "detect-all.jsonl").write_text("\n".join(rows))
    monkeypatch.setattr(sys, "argv", ["probe_vision.py", "names", str(tmp_path / "detect-all.jsonl"),
                                      "--benchmark", str(tmp_path / "spec.yaml")])
    probe_vision.main()
    out = capsys.readouterr().out
    assert "3 boxes on a shape, 1 on none" in out
    assert "colour right  1.00" in out and "kind right    0.67" in out
    assert "present phrases answered None 0.25" in out, "scene 2's phrase names another kind: its shape went unnamed"


def test_misses_sort_each_referring_top_box_by_the_shape_it_lands_on(tmp_path, monkeypatch, capsys):
    import json

    from rexomni.eval.runner import synth_samples

    scenes = dict(mode="single", size=224, sizes=["large"], num_objects=[2, 2], distractors=False, n=2, seed=7)
    (tmp_path / "spec.yaml").write_text(json.dumps({"datasets": [{"name": "referring", "task": "referring",
                                                                   "synth": scenes}]}))
    rows, same_kind = [], []
    for scene in synth_samples(scenes):
        first, second = scene["objects"]
        same_kind.append(first["attributes"]["kind"] == second["attributes"]["kind"])
        for shape, box in ((first, second["bbox"]), (second, second["bbox"])):  # the first asked misses
            phrase = f"{shape['attributes']['color']} {shape['attributes']['kind']}"
            # A low-scored decoy first: the top box is the one with the highest score.
            rows.append(json.dumps({"key": f"{scene['key']}#{phrase}", "boxes": [[0, 0, 1, 1], box],
                                    "scores": [0.1, 0.9]}))
    (tmp_path / "referring.jsonl").write_text("\n".join(rows))
    where, by_count, by_kind = probe_vision.referring_misses(str(tmp_path / "referring.jsonl"),
                                                            str(tmp_path / "spec.yaml"))
    assert where["own shape"] == 2 and sum(where.values()) == 4
    assert by_count == {2: 0.5}
    # Each scene's phrases are right once in two, whether its two shapes share a kind or not.
    assert by_kind == {beside: 0.5 for beside in ("with", "without")
                       if (beside == "with") in same_kind}
    monkeypatch.setattr(sys, "argv", ["probe_vision.py", "misses", str(tmp_path / "referring.jsonl"),
                                      "--benchmark", str(tmp_path / "spec.yaml")])
    probe_vision.main()
    assert "own shape                            0.500" in capsys.readouterr().out


def test_token_labels_name_the_cell_of_each_centre_and_the_larger_shape_wins():
    from PIL import Image

    def shape(box, kind, color):
        return {"bbox": box, "attributes": {"kind": kind, "color": color}}

    scene = {"image": Image.new("RGB", (224, 224)), "objects": [
        shape([0, 0, 100, 100], "star", "red"),      # centre (50, 50): cell (0, 0) of a 4 x 4 grid
        shape([40, 40, 60, 60], "ring", "blue"),     # the same cell, smaller: loses it
        shape([150, 170, 220, 220], "cross", "white"),  # centre (185, 195): cell (3, 3)
    ]}
    kinds, colours = probe_vision.token_labels([scene], rows=4, cols=4)
    assert kinds[0] == probe_vision.KINDS.index("star") and colours[0] == probe_vision.COLOURS.index("red")
    assert kinds[15] == probe_vision.KINDS.index("cross")
    assert (kinds != probe_vision.IGNORE).sum() == 2 and (colours != probe_vision.IGNORE).sum() == 2


def test_learn_dense_scores_shape_tokens_of_crowded_scenes(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["probe_vision.py", "learn", "--dense", "--steps", "2", "--eval-every", "2",
                                      "--batch", "4", "--width", "32"])
    probe_vision.main()
    out = capsys.readouterr().out
    assert "every shape-centre token of crowded scenes" in out and "step 2: loss" in out


class _AnswersFirstPhrase:
    """A fake model that boxes the first phrase of each request and nothing else."""

    def detect(self, image, phrases):
        from types import SimpleNamespace

        return SimpleNamespace(labels=[phrases[0]])


def test_presence_counts_each_phrase_alone_and_in_a_list_in_both_orders(capsys):
    shares = probe_vision.probe_presence(_AnswersFirstPhrase(), 6, seed=1)
    assert shares["own phrase, alone"] == shares["absent look-alike, alone"] == 1.0
    assert shares["own phrase, in a list"] == shares["absent look-alike, in a list"] == 0.5
    assert "boxed, over 6 scenes" in capsys.readouterr().out


class _BoxesEveryPhraseOnTheFirstShape:
    """A fake model that boxes every asked phrase on the scene's first shape (found by its phrase)."""

    def __init__(self, scenes):
        self.first = {id(s["image"]): s["objects"][0]["bbox"] for s in scenes}

    def detect(self, image, phrases):
        from types import SimpleNamespace

        return SimpleNamespace(labels=list(phrases), boxes=[self.first[id(image)]] * len(phrases))


def test_lists_count_unrelated_phrases_boxed_and_shapes_found(monkeypatch, capsys):
    scenes = probe_vision.benchmark_scenes(4, 3, crowded=True)
    monkeypatch.setattr(probe_vision, "benchmark_scenes", lambda n, seed, crowded: scenes)
    shares = probe_vision.probe_lists(_BoxesEveryPhraseOnTheFirstShape(scenes), 4, absent=5, seed=3)
    assert shares["unrelated boxed"] == 1.0
    assert shares["shapes found"] == len(scenes) / sum(len(s["objects"]) for s in scenes) < 1  # the first ones
    assert "5 unrelated absent phrases: 1.000 of them boxed" in capsys.readouterr().out


def test_decisions_split_phrases_by_sort_and_mass_none_is_a_subset_of_argmax_none(tiny_rexomni, tmp_path):
    import json

    from rexomni.eval.runner import synth_samples

    scenes = synth_samples(dict(probe_vision.SCENES, num_objects=[2, 3], distractors=True, n=3, seed=9))
    rows = probe_vision.presence_decisions(tiny_rexomni, scenes)
    assert set(rows) <= {"present", "absent: colour", "absent: other"} and "present" in rows
    assert sum(r["phrases"] for r in rows.values()) == sum(len(s["categories"]) for s in scenes)
    for r in rows.values():  # None at half the probability or more beats every single coordinate
        assert 0 <= r["None by mass"] <= r["None by argmax"] <= 1
    # Every phrase boxed: a second phrase of a kind always comes after a same-kind box, and is boxed.
    path = tmp_path / "detection.jsonl"
    path.write_text("\n".join(json.dumps({"key": s["key"], "labels": s["categories"]}) for s in scenes))
    shares = probe_vision.boxed_after_same_kind(str(path), scenes)
    assert shares and all(v == 1.0 for v in shares.values())
    assert any("after a same-kind box" in k for k in shares) == any(
        len({p.partition(" ")[2] for p in s["categories"]}) < len(s["categories"]) for s in scenes)


def test_attention_shares_image_attention_between_the_asked_shape_and_its_look_alike(tiny_checkpoint, capsys):
    shares = probe_vision.probe_attention(tiny_checkpoint, 3, 0)
    assert set(shares) == {"asked shape", "look-alike"}
    for layer_own, layer_other in zip(shares["asked shape"], shares["look-alike"]):
        # Disjoint tokens of one distribution: each share and their sum lie in [0, 1], and some lands on each.
        assert 0 < layer_own < 1 and 0 < layer_other < 1 and layer_own + layer_other <= 1 + 1e-6
    assert "3 requests with a look-alike" in capsys.readouterr().out
