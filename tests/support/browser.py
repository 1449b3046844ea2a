"""A page opened in headless Chromium (Debian's `chromium` package), driven over the DevTools
protocol with aiohttp's websocket client (already installed: kopf's HTTP library): what a
person's browser would show of a report, with its console errors and a screenshot.

Chromium runs as a child process with its own throw-away profile, listens on a port it
chooses (`--remote-debugging-port=0`, written to DevToolsActivePort in the profile), and is
stopped when the page is done.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

BROWSERS = ("chromium", "chromium-browser")
START_TIMEOUT = 60.0
LOAD_TIMEOUT = 60.0
# Each image and table as the browser laid it out.
LAYOUT = """JSON.stringify({
  images: [...document.images].map(i => ({alt: i.alt, complete: i.complete,
    width: i.naturalWidth, height: i.naturalHeight,
    shown: i.getBoundingClientRect().width * i.getBoundingClientRect().height})),
  tables: [...document.querySelectorAll("table")].map(t => ({cls: t.className,
    rows: t.rows.length, height: t.getBoundingClientRect().height,
    text: t.innerText})),
  title: document.title})"""


def chromium() -> str | None:
    """The Chromium executable on PATH, if any."""
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


@dataclass
class RenderedPage:
    """What the browser made of a page."""

    images: list[dict[str, Any]]
    tables: list[dict[str, Any]]
    title: str
    console_errors: list[str] = field(default_factory=list)
    screenshot: bytes = b""


def render(page: Path, executable: str, width: int = 1280) -> RenderedPage:
    """Open `page` (a local file) in headless Chromium: its layout, console errors and a
    full-page PNG screenshot."""
    profile = Path(tempfile.mkdtemp(prefix="finetune-chromium-"))
    process = subprocess.Popen(
        [
            executable,
            "--headless",
            "--no-sandbox",  # tests may run as root, where the sandbox refuses to start
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            f"--window-size={width},900",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port = _devtools_port(profile, process)
        return asyncio.run(_render(port, page.resolve().as_uri(), width))
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(profile, ignore_errors=True)


def _devtools_port(profile: Path, process: subprocess.Popen[bytes]) -> int:
    """The port Chromium chose, once it has written it."""
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"chromium exited with code {process.returncode} at start")
        if marker.is_file() and (lines := marker.read_text().splitlines()):
            return int(lines[0])
        time.sleep(0.1)
    raise TimeoutError(f"chromium did not open its DevTools port within {START_TIMEOUT:g} s")


class _Session:
    """One page's DevTools websocket: commands by id, events kept as they come."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse):
        self.socket = socket
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        wanted = self.next_id
        await self.socket.send_json({"id": wanted, "method": method, "params": params})
        while True:
            message = json.loads((await self.socket.receive()).data)
            if message.get("id") == wanted:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            if "method" in message:
                self.events.append(message)

    async def wait_for(self, event: str) -> None:
        while not any(e["method"] == event for e in self.events):
            message = json.loads((await self.socket.receive()).data)
            if "method" in message:
                self.events.append(message)

    def console_errors(self) -> list[str]:
        errors = []
        for event in self.events:
            params = event.get("params", {})
            if event["method"] == "Runtime.consoleAPICalled" and params.get("type") == "error":
                errors.append(" ".join(str(a.get("value", a)) for a in params.get("args", [])))
            elif event["method"] == "Runtime.exceptionThrown":
                errors.append(str(params.get("exceptionDetails", {}).get("text")))
            elif event["method"] == "Log.entryAdded":
                entry = params.get("entry", {})
                if entry.get("level") == "error":
                    errors.append(
                        f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}"
                    )
        return errors


async def _render(port: int, url: str, width: int) -> RenderedPage:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/json/list") as response:
            targets = await response.json()
        target = next(t for t in targets if t.get("type") == "page")
        async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as socket:
            session = _Session(socket)
            for domain in ("Page", "Runtime", "Log"):
                await session.call(f"{domain}.enable")
            await session.call("Page.navigate", url=url)
            await asyncio.wait_for(session.wait_for("Page.loadEventFired"), LOAD_TIMEOUT)
            evaluated = await session.call(
                "Runtime.evaluate", expression=LAYOUT, returnByValue=True
            )
            layout = json.loads(evaluated["result"]["value"])
            metrics = await session.call("Page.getLayoutMetrics")
            size = metrics.get("cssContentSize") or metrics["contentSize"]
            shot = await session.call(
                "Page.captureScreenshot",
                format="png",
                captureBeyondViewport=True,
                clip={"x": 0, "y": 0, "width": width, "height": size["height"], "scale": 1},
            )
            return RenderedPage(
                images=layout["images"],
                tables=layout["tables"],
                title=layout["title"],
                console_errors=session.console_errors(),
                screenshot=base64.b64decode(shot["data"]),
            )


def artifacts_dir() -> Path:
    """Where tests leave files for a person to look at (FINETUNE_TEST_ARTIFACTS, default
    test-artifacts/ in the repository, which git ignores)."""
    default = Path(__file__).resolve().parents[2] / "test-artifacts"
    directory = Path(os.environ.get("FINETUNE_TEST_ARTIFACTS") or default)
    directory.mkdir(parents=True, exist_ok=True)
    return directory
