"""The benchmark's processes (test engine, raw loop, worker) and what ``/proc`` says of them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Process:
    """A child process; ``cpu_seconds`` and ``rss`` come from ``/proc/<pid>``."""

    def __init__(self, argv: list[str], *, env: Mapping[str, str] | None = None, log: Path | None = None) -> None:
        self._log: IO[bytes] | None = log.open("wb") if log else None
        self.process = subprocess.Popen(
            argv,
            env=dict(env) if env is not None else None,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE if self._log is None else self._log,
            stderr=subprocess.STDOUT if self._log is not None else None,
            text=False,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float:
        """User + system CPU of the process so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime

    def memory(self, key: str = "VmHWM") -> int:
        """``VmHWM`` (peak resident set) or ``VmRSS`` in bytes."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    def read_line(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.process.args[:3]} exited (code {self.process.poll()}) before answering")
        return line.decode().strip()

    def write_line(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text.encode() + b"\n")
        self.process.stdin.flush()

    def stop(self, timeout: float = 30) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdin is not None:
            self.process.stdin.close()
        if self._log is not None:
            self._log.close()


class EngineProcess(Process):
    def __init__(self, exec_delay: float = 0.0) -> None:
        super().__init__([sys.executable, "-m", "bench.engine_server", "--exec-delay", str(exec_delay)])
        self.session = json.loads(self.read_line())

    def env(self) -> dict[str, str]:
        return {"DAGGER_SESSION_PORT": str(self.session["port"]), "DAGGER_SESSION_TOKEN": self.session["session_token"]}

    def stats(self) -> dict[str, Any]:
        self.write_line("stats")
        return dict(json.loads(self.read_line()))

    def stop(self, timeout: float = 30) -> None:
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()  # EOF: the server stops
        super().stop(timeout)


class RawLoopProcess(Process):
    def __init__(self, amqp_url: str, prefix: str, prefetch: int) -> None:
        super().__init__([sys.executable, "-m", "bench.raw_loop", amqp_url, prefix, str(prefetch)])
        if self.read_line() != "ready":
            raise RuntimeError("the raw loop did not start")


class WorkerProcess(Process):
    """``dagger-adapter worker`` configured by ``settings`` (config fields)."""

    def __init__(self, settings: Mapping[str, Any], engine: EngineProcess, log: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGGER_ADAPTER_", "DAGGER_SESSION_"))}
        env.update({f"DAGGER_ADAPTER_{k.upper()}": str(v) for k, v in settings.items()})
        env.update(engine.env())
        script = shutil.which("dagger-adapter", path=str(Path(sys.executable).parent)) or "dagger-adapter"
        super().__init__([script, "worker"], env=env, log=log)
