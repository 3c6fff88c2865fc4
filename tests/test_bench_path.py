"""bench/bench_path.py: the stages it times are the path's, and a run's speed is read from its summary."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bench_path", ROOT / "bench" / "bench_path.py")
bench_path = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_path)


def test_the_stages_and_their_steps_are_those_of_train_default():
    script = (ROOT / "scripts" / "train_default.sh").read_text()
    announced = [int(n.replace(",", "")) for n in re.findall(r"== \d/7 .*\(([\d,]+) steps\)", script)]
    assert announced == [steps for _, _, steps in bench_path.STAGES]
    for _, args, _ in bench_path.STAGES:
        assert pathlib.Path(args[args.index("--config") + 1]).name in script


def test_each_stage_is_cut_without_changing_its_schedule():
    command = bench_path.stage_command(bench_path.STAGES[2][1], 40, "/tmp/x")
    assert command[command.index("--stop_at_step") + 1] == "40" and "--max_steps" not in command
    assert command[command.index("--eval_examples") + 1] == "0"
    warmup = bench_path.stage_command(bench_path.STAGES[0][1], 40, "/tmp/x")
    assert warmup[warmup.index("--max_steps") + 1] == "40" and "--stop_at_step" not in warmup


def test_speed_comes_from_the_last_summary_line():
    summary = {"output_dir": "x", "global_step": 400, "train": {"train_runtime": 100.0}}
    log = "100%|##| 400/400 [01:40<00:00]\n{not json}\n" + json.dumps(summary) + "\n"
    assert bench_path.steps_per_second(log) == pytest.approx(4.0)
    assert bench_path.projected_minutes(4.0, 9000) == pytest.approx(37.5)
    with pytest.raises(ValueError, match="no training summary"):
        bench_path.steps_per_second("Traceback (most recent call last):\n  ...\nValueError: bad config")
