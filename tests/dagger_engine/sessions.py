"""What a real engine keeps per *session* (one ``dagger session``, i.e. one session token;
every connection made with that token shares it), as opposed to engine-wide state (the
operation cache, cache volumes, images):

- registry credentials: ``withRegistryAuth`` stores them here and returns its container
  unchanged, so every later pull in the session may use them, whichever container asked;
- host snapshots: ``Host.directory``/``Host.file`` without ``noCache`` are read once per
  session and that snapshot is reused (later reads see the old content);
- served modules: the schema a session sees grows with the modules it serves, and a module
  is loaded in one version only.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import graphql

from tests.dagger_engine.modules import ModuleSpec


@dataclasses.dataclass(eq=False)
class Session:
    token: str
    schema: graphql.GraphQLSchema
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    # registry host -> (username, password, secret name); the last withRegistryAuth for a host wins
    registry_auths: dict[str, tuple[str, str, str]] = dataclasses.field(default_factory=dict)
    host_snapshots: dict[tuple[Any, ...], Any] = dataclasses.field(default_factory=dict)
    served: dict[str, ModuleSpec] = dataclasses.field(default_factory=dict)  # by module name
    function_results: dict[str, Any] = dataclasses.field(default_factory=dict)  # cache="session" calls
    closed: bool = False

    def add_auth(self, host: str, username: str, password: str, secret_name: str) -> None:
        with self.lock:
            self.registry_auths[host] = (username, password, secret_name)

    def auths(self) -> dict[str, tuple[str, str]]:
        """host -> (username, password): what a pull in this session presents."""
        with self.lock:
            return {host: (user, password) for host, (user, password, _) in self.registry_auths.items()}

    def auth_records(self) -> tuple[tuple[str, str, str], ...]:
        """(host, username, secret name) per credential, for exec records."""
        with self.lock:
            return tuple((host, user, name) for host, (user, _, name) in sorted(self.registry_auths.items()))
