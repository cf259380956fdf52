"""Container images and the registries that serve them: only what a test declares exists.

A test declares an image (``engine.add_image("python:3.12-slim", ...)``): its digest, files,
the commands it has (see ``commands.py``), whether it is private and which credentials pull
it. ``Container.from`` resolves the reference like a registry client does -- short names are
``docker.io/library/<name>``, a missing tag is ``latest`` -- and fails with the error texts a
real engine reports (buildkit's resolver, wrapped as "failed to resolve source metadata for
..."): an undeclared image is "not found"; a private one without the session's credentials is
"pull access denied" on Docker Hub and "401 Unauthorized" elsewhere; wrong credentials are 401;
a registry fault a test injects (403, 429, 5xx) reads like the registry's own answer.

Resolution happens on every ``from`` (a real engine asks the registry for the tag's digest),
so ``engine.move_tag(ref)`` is seen by the next ``from``, and the new digest changes the
content key of everything built on it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
import threading
from collections.abc import Iterable, Mapping
from typing import TypedDict, Unpack

DOCKER_HUB = "docker.io"
# What ``from`` of an image without declared commands gets: a busybox-like userland.
BASE_COMMANDS = frozenset(
    {
        *("sh", "ash", "echo", "printf", "cat", "env", "true", "false", "sleep", "touch", "mkdir", "exit", "test"),
        *("ls", "cp", "mv", "rm", "ln", "chmod", "pwd", "id", "whoami", "uname", "date", "basename", "dirname"),
        *("head", "tail", "wc", "grep", "sed", "awk", "cut", "sort", "uniq", "tr", "tee", "find", "xargs"),
        *("sha256sum", "md5sum", "tar", "gzip", "wget"),
    }
)
FAULTS = {
    "unauthorized": "401 Unauthorized",
    "forbidden": "403 Forbidden",
    "rate_limited": "429 Too Many Requests",
    "server_error": "500 Internal Server Error",
    "bad_gateway": "502 Bad Gateway",
    "unavailable": "503 Service Unavailable",
}


@dataclasses.dataclass(frozen=True, slots=True)
class Reference:
    host: str
    repository: str  # e.g. library/alpine
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        return f"{self.host}/{self.repository}"

    @property
    def tagged(self) -> str:
        """``host/repo:tag`` (the key images are declared under)."""
        return f"{self.name}:{self.tag or 'latest'}"

    def __str__(self) -> str:
        return self.name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")


def parse_reference(address: str) -> Reference:
    """Docker's normalization: ``alpine`` -> ``docker.io/library/alpine:latest``."""
    rest, _, digest = address.partition("@")
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        host, path = first, remainder
    else:
        host, path = DOCKER_HUB, rest
    if host == "index.docker.io":
        host = DOCKER_HUB
    name, colon, tag = path.rpartition(":")
    if not colon or "/" in tag:
        name, tag = path, ""
    if host == DOCKER_HUB and "/" not in name:
        name = f"library/{name}"
    if not name or name != name.lower() or any(c.isspace() for c in address):
        raise RegistryError(f"invalid reference format: repository name must be lowercase: {address!r}")
    return Reference(host, name, tag or (None if digest else "latest"), digest or None)


def new_digest() -> str:
    return "sha256:" + hashlib.sha256(secrets.token_bytes(16)).hexdigest()


@dataclasses.dataclass(frozen=True, slots=True)
class Image:
    """One image version: what a tag (or digest) resolves to."""

    reference: Reference
    digest: str
    files: Mapping[str, str]
    commands: frozenset[str]
    env: Mapping[str, str]
    workdir: str
    private: bool
    credentials: tuple[str, str] | None  # (username, password) the registry accepts

    @property
    def image_ref(self) -> str:
        """What ``Container.imageRef`` answers: ``host/repo:tag@sha256:...``."""
        return f"{self.reference.tagged}@{self.digest}"


class ImageOptions(TypedDict, total=False):
    """What a test may say about an image it declares (all optional)."""

    files: Mapping[str, str]  # path in the image -> text
    commands: Iterable[str]  # its executables (default BASE_COMMANDS)
    env: Mapping[str, str]  # its config's environment
    workdir: str  # its config's working directory (default "/")
    private: bool  # pulls need the session's credentials for its registry
    credentials: tuple[str, str]  # (username, password) it accepts; implies private
    digest: str  # sha256:... (default: a new random one)


class RegistryError(Exception):
    """A pull that failed; the message is what the engine reports."""


class Registries:
    """Every registry the engine can reach, with what tests declared in them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tags: dict[str, Image] = {}  # host/repo:tag -> current image
        self._by_digest: dict[str, Image] = {}  # host/repo@digest -> image (old digests stay pullable)
        self._faults: dict[str, tuple[str, int | None]] = {}  # host or host/repo[:tag] -> (fault, remaining)
        self.pulls = 0  # resolutions answered (successful or not), for tests

    def add(self, address: str, **options: Unpack[ImageOptions]) -> Image:
        ref = parse_reference(address)
        commands = options.get("commands")
        credentials = options.get("credentials")
        image = Image(
            reference=ref,
            digest=options.get("digest") or new_digest(),
            files=dict(options.get("files") or {}),
            commands=frozenset(BASE_COMMANDS if commands is None else commands),
            env=dict(options.get("env") or {}),
            workdir=options.get("workdir", "/"),
            private=options.get("private", False) or credentials is not None,
            credentials=credentials,
        )
        with self._lock:
            self._tags[ref.tagged] = image
            self._by_digest[f"{ref.name}@{image.digest}"] = image
        return image

    def move_tag(self, address: str, *, files: Mapping[str, str] | None = None) -> Image:
        """Push a new version under the same tag: a new digest (and maybe new files)."""
        ref = parse_reference(address)
        with self._lock:
            old = self._tags.get(ref.tagged)
            if old is None:
                raise KeyError(f"no image {ref.tagged} declared")
            new = dataclasses.replace(old, digest=new_digest(), files=dict(old.files if files is None else files))
            self._tags[ref.tagged] = new
            self._by_digest[f"{ref.name}@{new.digest}"] = new
        return new

    def get(self, address: str) -> Image | None:
        ref = parse_reference(address)
        with self._lock:
            return self._tags.get(ref.tagged)

    def fail(self, target: str, fault: str, *, times: int | None = None) -> None:
        """Make pulls from ``target`` (a registry host, or an image reference) fail with
        ``fault`` (one of ``FAULTS``); ``times`` limits how often."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {sorted(FAULTS)}")
        with self._lock:
            self._faults[_fault_key(target)] = (fault, times)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _injected(self, ref: Reference) -> str | None:
        with self._lock:
            for key in (ref.tagged, ref.name, ref.host):
                if key in self._faults:
                    fault, remaining = self._faults[key]
                    if remaining is not None:
                        if remaining <= 0:
                            continue
                        self._faults[key] = (fault, remaining - 1)
                    return fault
        return None

    def resolve(self, address: str, auths: Mapping[str, tuple[str, str]]) -> Image:
        """The image ``address`` names, pulled with the session's ``auths`` (host -> (user,
        password)); raises RegistryError like a real pull."""
        ref = parse_reference(address)
        with self._lock:
            self.pulls += 1
        prefix = f"failed to resolve source metadata for {ref}"
        fault = self._injected(ref)
        if fault is not None:
            raise RegistryError(_fault_message(prefix, ref, fault))
        with self._lock:
            image = self._by_digest.get(f"{ref.name}@{ref.digest}") if ref.digest else self._tags.get(ref.tagged)
        if image is None:
            if ref.host == DOCKER_HUB and ref.host not in auths:
                # Docker Hub does not say whether a repository exists to anonymous clients.
                raise RegistryError(f"{prefix}: {_DENIED}")
            raise RegistryError(f"{prefix}: {ref}: not found")
        if image.private:
            given = auths.get(ref.host)
            if given is None:
                if ref.host == DOCKER_HUB:
                    raise RegistryError(f"{prefix}: {_DENIED}")
                raise RegistryError(_fault_message(prefix, ref, "unauthorized"))
            if image.credentials is not None and tuple(given) != tuple(image.credentials):
                raise RegistryError(_fault_message(prefix, ref, "unauthorized"))
        return image


_DENIED = (
    "pull access denied, repository does not exist or may require authorization: "
    "server message: insufficient_scope: authorization failed"
)


def _fault_key(target: str) -> str:
    if "/" not in target and ("." in target or ":" in target or target == "localhost"):
        return target  # a registry host
    ref = parse_reference(target)
    return ref.tagged if ":" in target.rsplit("/", 1)[-1] else ref.name


def _fault_message(prefix: str, ref: Reference, fault: str) -> str:
    status = FAULTS[fault]
    manifest = f"https://{ref.host}/v2/{ref.repository}/manifests/{ref.tag or ref.digest}"
    if fault in {"unauthorized", "forbidden"}:
        return (
            f"{prefix}: failed to authorize: failed to fetch oauth token: unexpected status from GET request to "
            f"https://{ref.host}/token?scope=repository%3A{ref.repository}%3Apull&service={ref.host}: {status}"
        )
    if fault == "rate_limited":
        return (
            f"{prefix}: unexpected status from HEAD request to {manifest}: {status} - "
            "Server message: toomanyrequests: You have reached your pull rate limit."
        )
    return f"{prefix}: unexpected status from HEAD request to {manifest}: {status}"


def auth_host(address: str) -> str:
    """The registry host ``withRegistryAuth(address:)`` stores credentials for (the engine's
    ParseAuthHost: a bare name without a dot is Docker Hub, ``registry-1``/``index`` too)."""
    host = address.removeprefix("http://").removeprefix("https://")
    first, slash, _ = host.partition("/")
    if "localhost" in first:
        return first
    if not slash and "." not in first:
        return DOCKER_HUB
    if "." not in first and ":" not in first:
        return DOCKER_HUB
    if first in {"registry-1.docker.io", "index.docker.io"}:
        return DOCKER_HUB
    if not slash:
        return first.split(":")[0] if first.count(":") == 1 and not first.split(":")[1].isdigit() else first
    return first


# The public images the test suite uses, declared by the ``dagger_engine`` fixture and by
# engines started in their own process (a test declares anything else itself).
PYTHON_COMMANDS = BASE_COMMANDS | {"python", "python3", "pip"}
SUITE_IMAGES: dict[str, frozenset[str]] = {
    "alpine": BASE_COMMANDS,
    "alpine:3.20": BASE_COMMANDS,
    "busybox:1.36": BASE_COMMANDS,
    "python:3.12": PYTHON_COMMANDS,
    "python:3.12-slim": PYTHON_COMMANDS,
}


def declare_suite_images(registries: Registries) -> None:
    for address, commands in SUITE_IMAGES.items():
        registries.add(address, commands=commands)
