"""Each API call gives its pooled connection back before the event loop sees the answer.

A response read on the event loop held its connection until the loop got round to it: with
the loop busy, the pool ran dry and every further call opened a new connection (a new TLS
handshake on a real API server), then threw it away ("Connection pool is full")."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes import client

from finetune_operator.kube import Kube

THREADS = 2
CALLS = 12


class Answers(ThreadingHTTPServer):
    """Answers every GET with a FineTuneJob, keeping the connection open (HTTP/1.1), and
    counts the answers."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Answer)
        self.answered = 0
        self.all_answered = threading.Event()
        self.lock = threading.Lock()


class Answer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Answers

    def do_GET(self) -> None:
        body = b'{"kind": "FineTuneJob", "metadata": {"name": "demo"}}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        with self.server.lock:
            self.server.answered += 1
            if self.server.answered == CALLS:
                self.server.all_answered.set()

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def answers() -> Iterator[Answers]:
    server = Answers()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


async def test_calls_need_no_more_connections_than_threads_while_the_loop_is_busy(
    answers: Answers,
) -> None:
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{answers.server_address[1]}"
    configuration.connection_pool_maxsize = THREADS
    api_client = client.ApiClient(configuration)
    api = Kube(api_client, timeout=5.0)
    executor = ThreadPoolExecutor(THREADS)
    asyncio.get_running_loop().set_default_executor(executor)
    calls = [asyncio.ensure_future(api.get_finetunejob("ml", f"demo-{i}")) for i in range(CALLS)]
    await asyncio.sleep(0)  # every call is handed to the threads
    # The loop is busy (held here on purpose) until every call has been answered.
    assert answers.all_answered.wait(timeout=30), f"{answers.answered} of {CALLS} answered"
    found = await asyncio.gather(*calls)
    assert [obj and obj["kind"] for obj in found] == ["FineTuneJob"] * CALLS
    pool = api_client.rest_client.pool_manager.connection_from_url(configuration.host)
    assert pool.num_connections <= THREADS
    api.close()
    executor.shutdown()
