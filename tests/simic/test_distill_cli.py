"""``esper simic distill``: the search-then-distill job from the command line, end to end on a tiny config."""

from __future__ import annotations

import json
import subprocess
import sys

from esper.cli.main import main
from esper.tamiyo.gnn.policy import GNNTamiyo

TINY = ["--variants", "1", "--arm", "heuristic-per-slot", "--seeds", "0", "--epochs", "2", "--offline-epochs", "2"]


def test_distill_records_the_arm_and_the_heuristic_clones_them_and_shows_progress(tmp_path, capsys):
    assert main(["simic", "distill", *TINY, "--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out.strip().splitlines()[-1])
    assert (summary["job"], summary["variants"], summary["episodes"]) == ("distill", 1, 2)
    assert json.loads((tmp_path / "chosen.json").read_text()) == {"mnist1d-1000": ["heuristic-per-slot"]}
    runs = [json.loads(line) for line in (tmp_path / "recorded_runs.jsonl").read_text().splitlines()]
    assert [(r["policy"], r["task"], r["seed"]) for r in runs] == [
        ("heuristic-per-slot", "mnist1d-1000", 0),
        ("heuristic", "mnist1d-1000", 0),
    ]
    assert len((tmp_path / "offline.csv").read_text().splitlines()) == 1 + 2  # header, two offline epochs
    policy = GNNTamiyo.load(tmp_path / "policy.pt")
    assert policy.config.epochs_total == 2 and policy.network.global_norm.count > 1
    assert "record: 100%" in err and "offline: 100%" in err  # tqdm bars on stderr


def test_no_progress_keeps_stderr_quiet(tmp_path, capsys):
    assert main(["simic", "distill", *TINY, "--out", str(tmp_path), "--no-progress"]) == 0
    assert capsys.readouterr().err == ""


def test_variants_without_an_arm_is_refused_naming_the_field(tmp_path, capsys):
    assert main(["simic", "distill", "--variants", "2", "--out", str(tmp_path)]) == 2
    assert "field 'arm'" in capsys.readouterr().err
    assert not (tmp_path / "recorded_runs.jsonl").exists()


def test_an_unknown_arm_is_refused_naming_the_field(tmp_path, capsys):
    assert main(["simic", "distill", "--variants", "2", "--arm", "nope", "--out", str(tmp_path)]) == 2
    assert "field 'arm': unknown arm 'nope'" in capsys.readouterr().err


def test_the_module_takes_the_same_flags(tmp_path):
    flags = ["--variants", "1", "--seeds", "x", "--arm", "heuristic", "--out", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, "-m", "esper.simic.distill", *flags],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2 and "field 'seeds'" in done.stderr
