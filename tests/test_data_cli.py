"""`rexomni data ...` end to end, through the real dispatcher."""

import json

from rexomni.data_engines.mixture import SYNTH_MIX
from rexomni.data_engines.readers import read_dataset

from rexomni.cli import main


def test_synth_then_convert(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["data", "synth", "--n", "6", "--out", str(out), "--seed", "2", "--size", "96",
                 "--mode", "shapes", "ocr", "keypoints"]) == 0
    samples, report = read_dataset(out / "samples.jsonl")
    assert len(samples) == 6 and not report.dropped
    assert len(list((out / "images").iterdir())) == 6
    assert main(["data", "convert", str(out / "samples.jsonl"), "--out", str(tmp_path / "c.jsonl")]) == 0
    printed = capsys.readouterr().out
    assert "kept 6 images" in printed and "wrote 6 samples" in printed


def test_mix_prints_counts_and_writes_examples(tmp_path, capsys):
    assert main(["data", "mix", SYNTH_MIX, "--n", "30",
                 "--out", str(tmp_path / "ex.jsonl")]) == 0
    printed = capsys.readouterr().out
    assert "30 examples" in printed and "task   grounding" in printed
    lines = [json.loads(x) for x in (tmp_path / "ex.jsonl").read_text().splitlines()]
    assert len(lines) == 30 and (tmp_path / lines[0]["image"]).exists()


def test_negatives_prints_foils(capsys):
    assert main(["data", "negatives", "a red car", "--n", "3"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    record = json.loads(line)
    assert record["phrase"] == "a red car" and len(record["foils"]) == 3


def test_synth_ood_draws_only_held_out_kinds(tmp_path):
    assert main(["data", "synth", "--n", "4", "--out", str(tmp_path), "--ood", "--size", "96"]) == 0
    samples, _ = read_dataset(tmp_path / "samples.jsonl")
    kinds = {o["attributes"]["kind"] for s in samples for o in s["objects"]}
    assert kinds and kinds <= {"heart", "crescent", "arrow"}


def test_convert_odvg_with_a_label_map(tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    record = {"filename": "a.png", "width": 32, "height": 32,
              "detection": {"instances": [{"bbox": [1, 1, 9, 9], "label": 3}]}}
    (tmp_path / "d.jsonl").write_text(json.dumps(record) + "\n")
    (tmp_path / "labels.json").write_text(json.dumps({"3": "kite"}))
    assert main(["data", "convert", str(tmp_path / "d.jsonl"), "--label-map", str(tmp_path / "labels.json"),
                 "--out", str(tmp_path / "out.jsonl")]) == 0
    (sample,) = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sample["objects"][0]["phrase"] == "kite"
