"""Log lines a person can follow, or JSON lines for a log pipeline (FINETUNE_LOG_FORMAT=json).

A JSON line holds time, level, logger and message, plus the record's structured extras
(`extra={"step": 12}`). On a terminal, human-readable lines go through rich, so they
interleave cleanly with the progress bar.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

LOG_FORMAT_ENV = "FINETUNE_LOG_FORMAT"
_STANDARD_FIELDS = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def _time(created: float) -> str:
    """RFC 3339 in UTC with a Z, as finetune_core.clock writes it, to the millisecond."""
    moment = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
    return moment.replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD_FIELDS})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class StderrHandler(logging.StreamHandler):
    """Writes to sys.stderr as it is when a line is logged, not as it was when the handler
    was made: where stderr is replaced later (a test runner captures each test's output
    and then closes it), lines go to the current one instead of to a closed file."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


def setup_logging() -> None:
    """Configure the root logger once per process, and quiet the libraries' own output."""
    json_lines = os.environ.get(LOG_FORMAT_ENV, "").lower() == "json"
    handler: logging.Handler
    if json_lines:
        handler = StderrHandler()
        handler.setFormatter(JsonFormatter())
    elif sys.stderr.isatty():
        from rich.logging import RichHandler

        handler = RichHandler(show_path=False, rich_tracebacks=True)
    else:
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    # Libraries: warnings only, and no tqdm bars (they would break JSON lines).
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in ("transformers", "peft", "accelerate", "urllib3", "datasets", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)
