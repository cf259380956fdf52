"""Running ``dagger-adapter console`` for tests, and a browser to look at it.

- ``ConsoleProcess``: the console as a subprocess (the real CLI verb), its URL read from the line
  it prints when it listens.
- ``launch_browser``: headless Chromium from Debian's package (``/usr/bin/chromium``, installed
  by ``.ci/run``) driven by Playwright; Playwright's own browser downloads are not used.
- ``Relay``: a TCP relay to RabbitMQ that a test can take down and bring back (the console sees
  a broker it cannot reach, then one it can), without touching the shared broker.
- ``screenshot``: saves a page where the README's screenshots live when asked to.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("DAGGER_ADAPTER_CHROMIUM", "/usr/bin/chromium")
# Where the tests save screenshots of the main pages: docs/screenshots when this is set to it
# (how the README's pictures are made), else the test's temporary directory.
SCREENSHOTS_ENV = "DAGGER_ADAPTER_SCREENSHOTS"
_LISTENING = re.compile(r"console on (http://\S+/)")


class ConsoleProcess:
    """``dagger-adapter console`` in a subprocess; stdout and stderr kept in a file."""

    def __init__(self, settings: Mapping[str, str], log_path: Path, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DAGGER_ADAPTER_")}
        env.update(settings)
        env["PYTHONUNBUFFERED"] = "1"
        script = shutil.which("dagger-adapter", path=str(Path(sys.executable).parent))
        command = [script] if script else [sys.executable, "-m", "consumer.cli"]
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [*command, "console", *args], env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT
        )
        self.url = ""

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def listening(self, timeout: float = 30) -> str:
        """The console's base URL, once it listens."""
        deadline = time.monotonic() + timeout
        while not (match := _LISTENING.search(self.output())):
            if self.process.poll() is not None:
                raise AssertionError(f"the console exited with {self.process.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the console did not listen within {timeout} s:\n{self.output()}")
            await asyncio.sleep(0.05)
        self.url = match.group(1)
        return self.url

    async def connected(self, timeout: float = 30) -> str:
        """The base URL, once the console listens and has connected to RabbitMQ (its log says so)."""
        url = await self.listening(timeout)
        deadline = time.monotonic() + timeout
        while "console connected to RabbitMQ" not in self.output():
            if time.monotonic() > deadline:
                raise AssertionError(f"the console did not connect within {timeout} s:\n{self.output()}")
            await asyncio.sleep(0.05)
        return url

    async def exited(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while (code := self.process.poll()) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"the console still runs after {timeout} s")
            await asyncio.sleep(0.05)
        return code

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()


@contextlib.asynccontextmanager
async def launch_browser() -> AsyncIterator[Any]:
    """A headless Chromium (Debian's); skipped outside CI when it is not installed."""
    from playwright.async_api import async_playwright

    if not _installed(CHROMIUM):
        if os.environ.get("CI"):
            raise AssertionError(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium package")
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; CI installs it)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            await browser.close()


def _installed(path: str) -> bool:
    return Path(path).exists()


def screenshot_path(name: str, fallback_dir: Path) -> Path:
    directory = Path(os.environ.get(SCREENSHOTS_ENV) or fallback_dir)
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{name}.png"


async def screenshot(page: Any, name: str, fallback_dir: Path) -> Path:
    path = screenshot_path(name, fallback_dir)
    await page.screenshot(path=str(path), full_page=True)
    return path


class Relay:
    """127.0.0.1:<port> relayed to RabbitMQ. ``down()`` drops every relayed connection and
    refuses new ones (accepts and closes them) until ``up()``."""

    def __init__(self, amqp_url: str) -> None:
        self.target = urlsplit(amqp_url)
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.open = True
        self.url = ""

    async def __aenter__(self) -> Relay:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        port = int(self.server.sockets[0].getsockname()[1])
        netloc = self.target.netloc.rsplit("@", 1)[0] + f"@127.0.0.1:{port}"
        self.url = urlunsplit(self.target._replace(netloc=netloc))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.down()
        if self.server is not None:
            self.server.close()

    def down(self) -> None:
        self.open = False
        for writer in list(self.writers):
            writer.transport.abort()

    def up(self) -> None:
        self.open = True

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target.hostname, self.target.port or 5672)
        except OSError:
            writer.transport.abort()
            return
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.writers -= {writer, up_writer}
