"""A training pod stopped (SIGTERM), killed (SIGKILL) or cut off from the store keeps its
work: checkpoints in the store, resumed by the next attempt, ending at the same step."""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from finetune_core.layout import RunPaths
from finetune_core.store import S3Store
from tests.conftest import TEST_CREDENTIALS
from tests.integration.trainer.harness import (
    complete_steps,
    log_lines,
    messages,
    start_trainer,
    tiny_run,
    trainer_env,
    wait_for,
)

pytestmark = pytest.mark.slow

PATHS = RunPaths("ml", "interrupted", 1)
TIMEOUT = 600


def progress_steps(log: Path) -> list[int]:
    return [line["progress"]["step"] for line in log_lines(log) if "progress" in line]


def test_sigterm_saves_and_uploads_a_checkpoint_then_exits_nonzero(
    s3_store: S3Store, s3_env: dict[str, str], tmp_path: Path
) -> None:
    run_uri = tiny_run(s3_store, PATHS, tmp_path, maxSteps=30, saveSteps=100)
    log = tmp_path / "train.log"
    process = start_trainer(run_uri, trainer_env(), log)
    wait_for(
        lambda: any(step >= 1 for step in progress_steps(log)),
        TIMEOUT,
        "the first optimizer step",
        process,
    )
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=TIMEOUT) == 143

    (stopped,) = [
        line["message"] for line in log_lines(log) if line["message"].startswith("stopped at step")
    ]
    step = int(stopped.split()[3])
    assert stopped == f"stopped at step {step} by SIGTERM; checkpoint uploaded"
    assert 1 <= step < 30
    assert complete_steps(s3_store, PATHS) == [step]  # not a saveSteps multiple: the SIGTERM one
    state = s3_store.get_json(f"{PATHS.checkpoint(step)}/trainer_state.json")
    assert state["global_step"] == step
    assert s3_store.get_json(PATHS.progress)["step"] == step
    assert not s3_store.exists(PATHS.metrics)


def test_sigkill_after_a_checkpoint_resumes_from_the_newest_complete_one(
    s3_store: S3Store, s3_env: dict[str, str], tmp_path: Path
) -> None:
    run_uri = tiny_run(s3_store, PATHS, tmp_path, maxSteps=8, saveSteps=2, keepCheckpoints=2)
    first_log = tmp_path / "first.log"
    first = start_trainer(run_uri, trainer_env(), first_log)
    wait_for(lambda: complete_steps(s3_store, PATHS), TIMEOUT, "a complete checkpoint", first)
    first.kill()
    first.wait(timeout=60)
    resume_from = complete_steps(s3_store, PATHS)[-1]
    assert resume_from < 8
    # An upload that a killed pod left half done: newer, but without its marker.
    s3_store.put_bytes(f"{PATHS.checkpoint(7)}/adapter_model.safetensors", b"half")

    second_log = tmp_path / "second.log"
    second = start_trainer(run_uri, trainer_env(), second_log)
    assert second.wait(timeout=TIMEOUT) == 0, second_log.read_text()[-3000:]

    assert f"resuming from checkpoint step-{resume_from}" in messages(second_log)
    assert progress_steps(second_log)[0] == resume_from
    progress = s3_store.get_json(PATHS.progress)
    assert progress["step"] == progress["totalSteps"] == 8  # as if never interrupted
    assert complete_steps(s3_store, PATHS) == [6, 8]
    assert not any("/step-7/" in key for key in s3_store.list(PATHS.checkpoints + "/"))
    history = s3_store.get_json(f"{PATHS.report}/loss_history.json")
    assert [entry["step"] for entry in history if "loss" in entry] == list(range(1, 9))
    metrics = s3_store.get_json(PATHS.metrics)
    # The base model was evaluated once, by the first attempt; the checkpoint carried it over.
    assert history[0]["evalLoss"] == metrics["baseEvalLoss"]
    assert "step 0: eval loss" in " ".join(messages(first_log))
    assert "step 0: eval loss" not in " ".join(messages(second_log))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def restartable_s3() -> Iterator[tuple[str, list[object]]]:
    """An S3 server of our own on a fixed port, which the test stops and starts again
    (moto keeps its buckets in the process, so they survive the restart)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    servers: list[object] = [ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)]
    servers[0].start()  # type: ignore[attr-defined]
    yield f"http://127.0.0.1:{port}", servers
    servers[-1].stop()  # type: ignore[attr-defined]


def test_store_outage_during_a_checkpoint_upload_does_not_stop_training(
    restartable_s3: tuple[str, list[object]], tmp_path: Path
) -> None:
    from moto.server import ThreadedMotoServer

    endpoint, servers = restartable_s3
    store = S3Store(
        "outage",
        endpoint=endpoint,
        retries=2,
        backoff_seconds=0.05,
        access_key=TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        secret_key=TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )
    store.ensure_bucket()
    run_uri = tiny_run(store, PATHS, tmp_path, maxSteps=10, saveSteps=2, keepCheckpoints=5)
    log = tmp_path / "train.log"
    process = start_trainer(run_uri, trainer_env(endpoint), log)
    wait_for(lambda: progress_steps(log), TIMEOUT, "training to start", process)

    servers[-1].stop()  # type: ignore[attr-defined]
    wait_for(
        lambda: [
            line
            for line in log_lines(log)
            if line["level"] == "warning"
            and "/checkpoints/step-2/" in line["message"]
            and "failed" in line["message"]
        ],
        TIMEOUT,
        "a failed checkpoint upload",
        process,
    )
    wait_for(
        lambda: max(progress_steps(log)) >= 4,
        TIMEOUT,
        "training to go on past the checkpoint while the store is down",
        process,
    )
    restarted = ThreadedMotoServer(
        ip_address="127.0.0.1", port=int(endpoint.rsplit(":", 1)[1]), verbose=False
    )
    restarted.start()
    servers.append(restarted)

    assert process.wait(timeout=TIMEOUT) == 0, log.read_text()[-3000:]
    assert complete_steps(store, PATHS) == [2, 4, 6, 8, 10]
    assert any(text.startswith("checkpoint step-2 uploaded") for text in messages(log))
    assert store.get_json(PATHS.progress)["step"] == 10
    assert store.exists(f"{PATHS.adapter}/adapter_model.safetensors")
    assert store.exists(PATHS.metrics)
