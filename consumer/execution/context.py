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

log = logging.getLogger("dagger_adapter.execution.context")

# on_progress(step, state, detail): state is "started", "succeeded" or "failed".
ProgressCallback = Callable[[str, str, str | None], None]

DEFAULT_REGISTRY = "docker.io"
RUN_NONCE_VARIABLE = "DAGGER_ADAPTER_RUN_NONCE"
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
    # Set for a replay, a retry or ``cache: false``: every container gets it as an environment
    # variable, so the engine's own cache cannot answer with what an earlier run produced.
    run_nonce: str | None = None
    # Image reference -> the same image pinned to its digest (resolved before the cache lookup,
    # so the run uses exactly the image the cache key names).
    pinned_images: dict[str, str] = field(default_factory=dict)
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
        """A host directory (already checked by the path rules), read once per attempt.
        ``no_cache``: a real engine otherwise snapshots a host path once per session, and a
        long-lived worker would hand later tasks (and the result cache) stale content."""
        if path not in self._host_dirs:
            self._host_dirs[path] = self.client.host().directory(path, no_cache=True)
        return self._host_dirs[path]

    def host_file(self, path: str) -> dagger.File:
        """A host file (already checked by the path rules), read as it is now."""
        return self.client.host().file(path, no_cache=True)

    def container(self, image: str) -> dagger.Container:
        """A container from ``image`` (pinned to its digest when resolved), with the registry
        logins attached before the pull and the run nonce, if any, set."""
        ctr = self.base_container(image)
        if self.run_nonce:
            ctr = ctr.with_env_variable(RUN_NONCE_VARIABLE, self.run_nonce)
        return ctr

    def base_container(self, image: str) -> dagger.Container:
        ctr = self.client.container()
        for login in self.logins:
            secret = self.client.set_secret(f"{self.task_id}/registry/{login.address}", login.password)
            ctr = ctr.with_registry_auth(login.address, login.username, secret)
        address = qualify_image(image, self.registry)
        return ctr.from_(self.pinned_images.get(address, address))

    async def resolve_image(self, image: str) -> str:
        """``image`` (a tag) as the engine resolves it now: the reference with its digest."""
        address = qualify_image(image, self.registry)
        if "@sha256:" in address:
            return address
        # The session is one credential set's: the image's address names the look-up.
        pinned = await self.session.image_ref(address, self.base_container(image).image_ref)
        self.pinned_images[address] = pinned
        return pinned

    def progress(self, step: str, state: str, detail: str | None = None) -> None:
        if self.on_progress is None:
            return
        try:
            self.on_progress(step, state, self.redact.clip(detail) if detail else detail)
        except Exception:  # a broken progress consumer must not fail the execution
            log.exception("progress callback failed")
