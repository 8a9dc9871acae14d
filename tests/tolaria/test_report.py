import json

import pytest

from esper.leyline import TrainingSignals
from esper.tolaria.report import EventLog, format_summary, load_report, write_report

from .conftest import make_trainer

REQUIRED = {
    "task",
    "policy",
    "seed",
    "epochs",
    "final_test_accuracy",
    "best_test_accuracy",
    "params_initial",
    "params_final",
    "seed_events",
    "wall_seconds",
}


def test_report_events_and_curves_are_written(small_task, tmp_path):
    log = EventLog(tmp_path / "events.jsonl")
    trainer = make_trainer(small_task, epochs=4)
    trainer.sinks.append(log)
    trainer.fit()
    log.close()
    report = write_report(trainer, tmp_path, {"task": "mnist1d", "policy": "heuristic", "seed": 0})
    assert REQUIRED <= set(report)
    on_disk = load_report(tmp_path)
    assert on_disk["epochs"] == 4 and on_disk["params_initial"] == 858
    assert on_disk["final_test_accuracy"] == trainer.history[-1].test_accuracy
    assert on_disk["best_test_accuracy"] == max(r.test_accuracy for r in trainer.history)
    first = on_disk["seed_events"][0]
    assert set(first) >= {"epoch", "slot", "blueprint", "from", "to", "reason"}
    assert (first["from"], first["to"], first["slot"]) == ("DORMANT", "GERMINATED", "s1")
    lines = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert len(lines) == trainer.published
    kinds = {line["type"] for line in lines}
    assert {"training_signals", "layer_health", "adaptation_decision", "seed_transition", "command_result"} <= kinds
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_is_readable(small_task, tmp_path):
    trainer = make_trainer(small_task, epochs=3)
    trainer.fit()
    text = format_summary(write_report(trainer, tmp_path, {"task": "mnist1d", "policy": "heuristic", "seed": 0}))
    assert "test accuracy: final" in text and "858 ->" in text
    assert "DORMANT -> GERMINATED" in text


def test_event_log_keeps_only_what_the_checkpoint_knows(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    for epoch in range(1, 4):
        log(TrainingSignals(epoch=epoch, train_loss=1, val_loss=1, train_accuracy=0, val_accuracy=0))
    log.close()
    EventLog(path, keep=2).close()
    assert [json.loads(x)["epoch"] for x in path.read_text().splitlines()] == [1, 2]
    with pytest.raises(ValueError, match="keep"):
        EventLog(path, keep=5)


def test_missing_report_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"report\.json"):
        load_report(tmp_path)
