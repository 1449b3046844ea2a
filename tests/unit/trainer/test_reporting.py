"""Loss history, the loss chart, progress numbers and JSON log lines."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any, cast

import pytest

from finetune_core.api import Progress
from finetune_trainer.logs import JsonFormatter, setup_logging
from finetune_trainer.losscurve import final_train_loss, loss_history, plot_loss
from finetune_trainer.progress import Throughput, progress_interval, snapshot
from tests.conftest import PROGRESS_CONTRACT_KEYS

LOG_HISTORY = [
    {"loss": 3.0, "learning_rate": 1e-4, "epoch": 0.5, "step": 1},
    {"loss": 2.0, "learning_rate": 1e-4, "epoch": 1.0, "step": 2},
    {"eval_loss": 2.5, "epoch": 1.0, "step": 2},
    {"loss": 1.0, "step": 3},
    {"eval_loss": 2.2, "step": 4},
    {"train_runtime": 9.0, "train_loss": 2.0},  # the trainer's summary: no step
]


def test_loss_history_merges_per_step_and_starts_at_the_base_model() -> None:
    assert loss_history(LOG_HISTORY, base_eval_loss=3.5) == [
        {"step": 0, "evalLoss": 3.5},
        {"step": 1, "loss": 3.0},
        {"step": 2, "loss": 2.0, "evalLoss": 2.5},
        {"step": 3, "loss": 1.0},
        {"step": 4, "evalLoss": 2.2},
    ]


def test_final_train_loss_is_the_mean_of_the_last_window() -> None:
    history = loss_history(LOG_HISTORY, None)
    assert final_train_loss(history, window=2) == pytest.approx(1.5)
    assert final_train_loss(history, window=10) == pytest.approx(2.0)
    assert final_train_loss([{"step": 0, "evalLoss": 1.0}], window=2) is None


def test_plot_loss_writes_a_png(tmp_path: Path) -> None:
    path = tmp_path / "loss.png"
    plot_loss(loss_history(LOG_HISTORY, 3.5), path, "job g1")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_throughput_and_eta_count_only_this_process() -> None:
    resumed = Throughput(start_step=10, start_tokens=5000, start_time=100.0)
    assert resumed.tokens_per_second(7000, now=110.0) == 200.0
    assert resumed.eta_seconds(step=15, total=25, now=110.0) == 20.0
    assert resumed.eta_seconds(step=10, total=25, now=110.0) is None


def test_snapshot_has_every_contract_key() -> None:
    from transformers import TrainerState

    state = TrainerState(global_step=15, max_steps=25, epoch=1.5, num_input_tokens_seen=7000)
    progress = snapshot(
        state, Throughput(10, 5000, 100.0), {"loss": 1.25, "learning_rate": 1e-4}, now=110.0
    )
    wire = progress.to_wire()
    assert set(wire) == PROGRESS_CONTRACT_KEYS
    assert Progress.model_validate(wire) == progress
    assert (wire["step"], wire["totalSteps"], wire["tokensPerSecond"]) == (15, 25, 200.0)
    # The project's one timestamp format: RFC 3339 in UTC with a Z, seconds precision.
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", wire["updatedAt"])


@pytest.mark.parametrize(("value", "seconds"), [(None, 15.0), ("2", 2.0), ("120", 30.0)])
def test_progress_interval_defaults_and_caps(
    monkeypatch: pytest.MonkeyPatch, value: str | None, seconds: float
) -> None:
    if value is None:
        monkeypatch.delenv("FINETUNE_PROGRESS_SECONDS", raising=False)
    else:
        monkeypatch.setenv("FINETUNE_PROGRESS_SECONDS", value)
    assert progress_interval() == seconds


def test_json_log_lines_carry_the_extras() -> None:
    record = logging.makeLogRecord(
        {
            "name": "finetune.train",
            "levelno": logging.INFO,
            "levelname": "INFO",
            "msg": "step %d",
            "args": (3,),
            "step": 3,
        }
    )
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "step 3" and line["step"] == 3 and line["level"] == "info"
    assert "args" not in line and "msg" not in line


def test_reporter_publishes_start_steps_and_end_without_counting_evaluation() -> None:
    from transformers import TrainerControl, TrainerState

    from finetune_trainer.progress import ProgressReporter

    published: list[dict[str, Any]] = []
    reporter = ProgressReporter(published.append, interval=0)
    state, control, args = TrainerState(max_steps=2), TrainerControl(), cast(Any, None)
    reporter.on_train_begin(args, state, control)
    state.global_step, state.num_input_tokens_seen = 1, 100
    reporter.on_log(args, state, control, logs={"loss": 2.0, "learning_rate": 1e-4})
    reporter.on_log(args, state, control, logs={"eval_loss": 1.5, "eval_runtime": 3600.0})
    state.global_step, state.num_input_tokens_seen = 2, 200
    reporter.on_train_end(args, state, control)

    assert [(p["step"], p.get("loss")) for p in published] == [(0, None), (1, 2.0), (2, 2.0)]
    # An hour of evaluation is not training time: subtracting it leaves no measurable
    # training time, rather than a throughput diluted by the evaluation.
    assert "tokensPerSecond" not in published[-1]


def test_log_lines_go_to_stderr_as_it_is_when_they_are_logged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stderr replaced after logging was set up (and the old one closed) still gets
    the lines: no "I/O operation on closed file"."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    monkeypatch.setenv("FINETUNE_LOG_FORMAT", "json")
    try:
        first = io.StringIO()
        monkeypatch.setattr(sys, "stderr", first)
        setup_logging()
        first.close()
        second = io.StringIO()
        monkeypatch.setattr(sys, "stderr", second)
        logging.getLogger("finetune.test").info("after the swap")
        assert json.loads(second.getvalue())["message"] == "after the swap"
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
