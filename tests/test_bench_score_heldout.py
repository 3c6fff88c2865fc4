"""bench/score_heldout.py: a saved checkpoint scored on a config's held-out sets gives training's numbers."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import yaml

PATH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "score_heldout.py"
spec = importlib.util.spec_from_file_location("score_heldout", PATH)
score_heldout = importlib.util.module_from_spec(spec)
spec.loader.exec_module(score_heldout)

# The shipped model on scenes it knows, so that the scores compared are not all zero.
CONFIG = {"model_name_or_path": "rexomni-synth", "eval_examples": 4, "eval_batch_size": 4, "eval_max_new_tokens": 40,
          "data": {"seed": 4, "codec": "center", "paraphrase": False,
                   "sources": [{"name": "shapes", "synth": {"mode": "single", "size": 224, "sizes": ["large"],
                                                            "num_objects": [1, 2]},
                                "tasks": {"grounding": 1, "referring": 1, "pointing": 1}}]}}


def test_the_table_holds_the_scores_training_logs(tmp_path, monkeypatch, capsys):
    from rexomni.data_engines.mixture import Mixture
    from rexomni.sft.heldout import evaluate_heldout, heldout_sets

    from rexomni.api import RexOmni

    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    monkeypatch.setattr(sys, "argv", ["score_heldout.py", str(tmp_path / "config.yaml"), "rexomni-synth"])
    score_heldout.main()
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| rexomni-synth |"))
    cells = [c.strip() for c in row.strip("|").split("|")][1:]

    model = RexOmni.from_pretrained("rexomni-synth", device="cpu")
    sets = heldout_sets(Mixture(CONFIG["data"]), 4)
    expected = evaluate_heldout(model.model, model.processor, model.settings, sets, 4, 40)
    assert any(float(c) > 0 for c in cells)
    assert cells == [f"{expected[f'{task}/{metric}']:.3f}" for task, metric in score_heldout.COLUMNS]
