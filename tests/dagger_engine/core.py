"""The engine's state behind the HTTP server: engine-wide (objects, the operation cache,
cache volumes, images, execs, secrets, exports, the modules it can load) and per session
(``sessions.py``)."""

from __future__ import annotations

import threading
from typing import Any

import graphql

from tests.dagger_engine.evaluation import Evaluator, OperationCache
from tests.dagger_engine.executor import ExecRunner
from tests.dagger_engine.filesystem import CacheStore
from tests.dagger_engine.images import Registries
from tests.dagger_engine.modules import ModuleSpec
from tests.dagger_engine.sessions import Session
from tests.dagger_engine.state import Registry, SecretState


class EngineCore:
    """Shared by every request (requests run concurrently, one thread each)."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.registry = Registry()
        self.caches = CacheStore()
        self.registries = Registries()
        self.operations = OperationCache()
        self.runner = ExecRunner(self.stopping)
        self.evaluator = Evaluator(self.runner, self.caches, self.secret_value, self.operations)
        self.exports: list[tuple[str, dict[str, str]]] = []
        self.modules: dict[str, ModuleSpec] = {}  # what moduleSource(refString:) can load, by ref
        self.sessions: dict[str, Session] = {}  # by token
        self.function_results: dict[str, Any] = {}  # module function calls, by call digest
        self._secret_values: dict[str, str] = {}  # secret state id -> plaintext
        self._secret_by_name: dict[str, str] = {}
        self.base_schema: graphql.GraphQLSchema | None = None  # the core API, no modules

    @property
    def schema(self) -> graphql.GraphQLSchema | None:
        """The core schema: what every session that serves no module executes against (one
        object per process, shared by every engine)."""
        return self.base_schema

    def add_secret(self, secret: SecretState, plaintext: str) -> SecretState:
        with self.lock:
            self._secret_values[secret.id] = plaintext
            self._secret_by_name[secret.name] = plaintext
        return self.registry.add(secret)

    def secret_value(self, secret: SecretState) -> str:
        with self.lock:
            if secret.id in self._secret_values:
                return self._secret_values[secret.id]
        raise graphql.GraphQLError(f"secret {secret.name!r} has no value in this session")

    def secret_plaintext(self, name: str) -> str | None:
        with self.lock:
            return self._secret_by_name.get(name)

    def record_export(self, host_path: str, files: dict[str, str]) -> None:
        with self.lock:
            self.exports.append((host_path, dict(files)))


class Request:
    """``info.context`` of a resolver: the engine and the session the query came from."""

    def __init__(self, core: EngineCore, session: Session) -> None:
        self.core = core
        self.session = session
