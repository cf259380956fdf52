"""A throw-away RabbitMQ node for tests that restart a broker (the shared one is never touched)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import uuid
from pathlib import Path

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRabbit:
    """A throw-away RabbitMQ node: its own name, ports, data, logs, config and Erlang cookie."""

    def __init__(self, base: Path) -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.node = f"rabbit-test-{uuid.uuid4().hex[:8]}@localhost"
        self.port = free_port()
        (base / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{self.port}\n")
        (base / "enabled_plugins").write_text("[].\n")
        (base / "rabbitmq-env.conf").write_text("")
        self.env = {
            **os.environ,
            "HOME": str(base),  # the Erlang cookie lives here: the CLI and the node share it
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_PID_FILE": str(base / "pid"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
        }

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _ctl(self, *args: str, timeout: float = 120) -> None:
        subprocess.run(
            [str(RABBIT_BIN / "rabbitmqctl"), "-n", self.node, *args],
            env=self.env,
            check=True,
            capture_output=True,
            timeout=timeout,
        )

    def start(self) -> None:
        subprocess.run(  # cwd: a crash dump (MnesiaCore.*) lands there, not in the repository
            [str(RABBIT_BIN / "rabbitmq-server"), "-detached"], env=self.env, check=True, timeout=60, cwd=self.base
        )
        self._ctl("wait", str(self.base / "pid"), "--timeout", "120")

    async def restart(self) -> None:
        """Stop the broker (every connection drops) and start it again; data is kept."""
        await asyncio.to_thread(self._ctl, "stop_app")
        await asyncio.to_thread(self._ctl, "start_app")

    async def restart_node(self) -> None:
        """Stop the whole node (the Erlang VM) and start it again; data is kept."""
        await asyncio.to_thread(self._ctl, "stop", str(self.base / "pid"))
        await asyncio.to_thread(self.start)

    def consumers(self, queue: str) -> int:
        """How many consumers ``queue`` has now."""
        out = subprocess.run(
            [
                str(RABBIT_BIN / "rabbitmqctl"),
                "-n",
                self.node,
                "list_consumers",
                "-q",
                "--no-table-headers",
                "queue_name",
            ],
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return sum(1 for line in out.stdout.splitlines() if line.strip() == queue)

    def stop(self) -> None:
        try:
            self._ctl("stop", str(self.base / "pid"), timeout=60)
        except (subprocess.SubprocessError, OSError):
            pid = (self.base / "pid").read_text().strip() if (self.base / "pid").exists() else ""
            if pid.isdigit():
                os.kill(int(pid), 9)
