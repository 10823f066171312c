"""benchmarks/understanding_choice.py: retention per family, paired lost/gained answers, the cheapest qualifying
configuration first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_benchmark_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "understanding_choice.py"


@pytest.fixture(scope="module")
def choice():
    return load_benchmark_script("understanding_choice")


def _report(accel, correct, kinds):
    return {"accel": accel, "split": "test", "understanding": {
        "n": len(correct), "correct": correct, "question_kinds": kinds, "seconds_per_answer": 0.01}}


KINDS = ["yesno", "choice"] * 4
NONE = [True, True, True, True, True, False, True, True]  # yesno 4/4, choice 3/4


def test_retention_lost_and_gained_are_per_family_and_paired(choice):
    pruned = "paper:understanding.prune_ratio=0,understanding.layer_skip_ratio=0,understanding.token_prune_ratio=0.75"
    reports = [_report("none", NONE, KINDS),
               _report(pruned, [True, True, False, True, True, True, True, False], KINDS)]
    rows = {r["accel"]: r for r in choice.rows(reports, layers=10)}
    row = rows[pruned]
    assert row["families"]["yesno"] == {"n": 4, "accuracy": 0.75, "retention": 0.75, "lost": 1, "gained": 0}
    # choice: lost question 7, gained question 5 — accuracy unchanged, but both changes are counted
    assert row["families"]["choice"] == {"n": 4, "accuracy": 0.75, "retention": 1.0, "lost": 1, "gained": 1}
    assert row["min_retention"] == 0.75
    assert row["work"] == pytest.approx((2 + 8 * 0.25) / 10)  # K = 2 of 10 layers full, then a quarter
    assert rows["none"]["work"] == 1.0 and rows["none"]["min_retention"] == 1.0


def test_the_cli_lists_qualifying_configurations_cheapest_first(choice, tmp_path, capsys):
    cheap = "paper:understanding.prune_ratio=0,understanding.layer_skip_ratio=0,understanding.token_prune_ratio=0.875"
    lossy = "paper:understanding.prune_ratio=0,understanding.layer_skip_ratio=0,understanding.token_prune_ratio=0.9"
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps([_report("none", NONE, KINDS), _report("paper", NONE, KINDS),
                                _report(cheap, NONE, KINDS), _report(lossy, [False] * 8, KINDS)]))
    assert choice.main([str(path), "--json", str(tmp_path / "out.json")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("tokens:ratio=0.875") and lines[1].endswith("yes")
    assert lines[-1].startswith("tokens:ratio=0.9") and not lines[-1].endswith("yes")
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["keep"] == 0.97 and len(saved["rows"]) == 4


def test_a_sweep_without_a_baseline_is_refused(choice, tmp_path):
    with pytest.raises(SystemExit, match="no 'none' row"):
        choice.rows([_report("paper", NONE, KINDS)], layers=10)
    with pytest.raises(SystemExit, match="not the same set"):
        choice.rows([_report("none", NONE, KINDS), _report("paper", NONE[:4], KINDS[:4])], layers=10)


@pytest.mark.parametrize("script", ["understanding_choice_sweep.sh", "testbed_understanding_sweep.sh"])
def test_every_configuration_the_sweep_scripts_ask_for_is_valid(script, tmp_path):
    """Run the sweep script with a stand-in ``flashu`` that records its arguments; every --accel must resolve."""
    import os
    import subprocess

    from flashu.accel.spec import resolve_accel, split_specs

    fake = tmp_path / "flashu"
    fake.write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$ARGS_FILE"\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "ARGS_FILE": str(tmp_path / "args")}
    subprocess.run(["bash", str(SCRIPT.parent / script), str(tmp_path / "out.json"), "some-model"], env=env,
                   check=True)
    args = (tmp_path / "args").read_text().splitlines()
    accels = [spec for i, a in enumerate(args) if a == "--accel" for spec in split_specs(args[i + 1])]
    assert "none" in accels and len(accels) == len(set(accels)) >= 20
    for spec in accels:
        resolve_accel(spec)
    assert args[args.index("--model") + 1] == "some-model"
