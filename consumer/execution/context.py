"""What every runner needs during one attempt: the engine client, secrets, registry auth,
path rules, progress reporting and redaction."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import dagger

from consumer.engine import EngineSession
from consumer.errors import TAIL_CHARS, clip, tail
from consumer.paths import PathRules
from schemas import RegistryCredentials

log = logging.getLogger(__name__)

# on_progress(step, state, detail): state is "started", "succeeded" or "failed".
ProgressCallback = Callable[[str, str, str | None], None]

DEFAULT_REGISTRY = "docker.io"
TOKEN_USERNAME = "token"  # username sent with a token-only credential (registries ignore it)


class Redactor:
    """Replaces every secret value in a text with ``***`` (results and error messages carry
    step output, and a step may print what it was given)."""

    MASK = "***"

    def __init__(self, values: Iterable[str]) -> None:
        # Longest first, so a secret that contains another is masked whole.
        self._values = sorted({v for v in values if v}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, self.MASK)
        return text

    def tail(self, text: str, limit: int = TAIL_CHARS) -> str:
        """The end of ``text``, masked in full *before* it is cut, so a secret that straddles
        the cut leaves no prefix or suffix behind."""
        return tail(self(text), limit)

    def clip(self, text: str) -> str:
        """An error message masked in full, then bounded (head and tail, see ``errors.clip``)."""
        return clip(self(text))

    def scrub(self, value: Any) -> Any:
        """Redact every string inside a JSON-like value."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {k: self.scrub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.scrub(v) for v in value]
        return value


def qualify_image(image: str, registry: str) -> str:
    """``python:3.12`` -> ``<registry>/python:3.12`` when the worker is configured with a
    registry other than Docker Hub; references that name a registry are left alone."""
    if registry in ("", DEFAULT_REGISTRY):
        return image
    first = image.split("/", 1)[0]
    names_registry = "/" in image and ("." in first or ":" in first or first == "localhost")
    return image if names_registry else f"{registry.rstrip('/')}/{image}"


@dataclass(slots=True, kw_only=True)
class RegistryLogin:
    address: str
    username: str
    password: str = field(repr=False)


def registry_logins(registry: str, *credentials: RegistryCredentials | None) -> list[RegistryLogin]:
    """The logins to attach, one per registry address; earlier credentials win."""
    logins: dict[str, RegistryLogin] = {}
    for cred in credentials:
        if cred is None:
            continue
        address = cred.address or registry or DEFAULT_REGISTRY
        logins.setdefault(
            address, RegistryLogin(address=address, username=cred.username or TOKEN_USERNAME, password=cred.secret)
        )
    return list(logins.values())


@dataclass(kw_only=True)
class RunContext:
    session: EngineSession
    rules: PathRules
    task_id: str
    registry: str
    secrets: Mapping[str, str]
    logins: list[RegistryLogin]
    redact: Redactor
    on_progress: ProgressCallback | None = None
    _secret_objects: dict[str, dagger.Secret] = field(default_factory=dict)
    _host_dirs: dict[str, dagger.Directory] = field(default_factory=dict)

    @property
    def client(self) -> dagger.Client:
        return self.session.client

    def secret(self, name: str) -> dagger.Secret:
        """The Dagger secret for the command's secret ``name``. The engine-side name is
        scoped to the task, so concurrent tasks in one engine session never share one."""
        if name not in self._secret_objects:
            self._secret_objects[name] = self.client.set_secret(f"{self.task_id}/{name}", self.secrets[name])
        return self._secret_objects[name]

    def host_directory(self, path: str) -> dagger.Directory:
        """A host directory (already checked by the path rules), loaded once per attempt."""
        if path not in self._host_dirs:
            self._host_dirs[path] = self.client.host().directory(path)
        return self._host_dirs[path]

    def container(self, image: str) -> dagger.Container:
        """A container from ``image``, with the registry logins attached before the pull."""
        ctr = self.client.container()
        for login in self.logins:
            secret = self.client.set_secret(f"{self.task_id}/registry/{login.address}", login.password)
            ctr = ctr.with_registry_auth(login.address, login.username, secret)
        return ctr.from_(qualify_image(image, self.registry))

    def progress(self, step: str, state: str, detail: str | None = None) -> None:
        if self.on_progress is None:
            return
        try:
            self.on_progress(step, state, self.redact.clip(detail) if detail else detail)
        except Exception:  # a broken progress consumer must not fail the execution
            log.exception("progress callback failed")
