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
