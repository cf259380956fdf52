"""The idempotency ledger in Valkey: what became of each task id, and who is running it now.

- The *outcome* of a finished task (its ``ExecutionResult``) is stored under the task id before
  the command is acked. A redelivered or duplicate command of that task republishes the stored
  result instead of running again; a dead-lettered failure runs again only when it is replayed
  (a new ``x-replay-id``).
- A *lease* (``SET NX PX``) marks a task as running on one worker. The running worker renews it
  every third of its lifetime; when that worker dies the lease expires and another one takes over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import uuid
from types import TracebackType

import msgspec
import valkey.asyncio as valkey

from schemas import ExecutionResult

log = logging.getLogger(__name__)

# Renew/release only a lease we still own: another worker may hold it after ours expired.
# A lease that vanished (expired during a stall, or Valkey restarted) is taken back when free.
_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class StoredOutcome(msgspec.Struct, kw_only=True):
    """A finished task's record."""

    result: ExecutionResult
    # The message whose handling produced the result, and whether that result has been published
    # (confirmed by the broker): a redelivered copy of that same message has nothing left to do.
    message_id: str | None = None
    published: bool = False
    # The replay id of the message that produced the outcome (see ``schemas.headers.REPLAY_ID``).
    replay_id: str | None = None
    # What the command asked for (``schemas.fingerprint``): the stored result answers only a
    # command with the same fingerprint; a task id reused for another command gets nothing of it.
    fingerprint: str | None = None


class Ledger:
    def __init__(self, client: valkey.Valkey, *, namespace: str, lease_seconds: float, outcome_ttl_seconds: float):
        self._client = client
        self._namespace = namespace
        self.lease_ms = max(1, round(lease_seconds * 1000))
        self._outcome_ttl_ms = max(1, round(outcome_ttl_seconds * 1000))
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder(StoredOutcome)

    @classmethod
    def from_url(cls, url: str, *, namespace: str, lease_seconds: float, outcome_ttl_seconds: float) -> Ledger:
        client = valkey.from_url(url, socket_timeout=10, socket_connect_timeout=10)  # type: ignore[no-untyped-call]
        return cls(client, namespace=namespace, lease_seconds=lease_seconds, outcome_ttl_seconds=outcome_ttl_seconds)

    async def ping(self) -> None:
        await self._client.ping()

    async def close(self) -> None:
        await self._client.aclose()

    def _key(self, kind: str, task_id: str) -> str:
        return f"dagger-adapter:{self._namespace}:{kind}:{task_id}"

    # --- outcomes ---
    async def outcome(self, task_id: str) -> StoredOutcome | None:
        raw = await self._client.get(self._key("outcome", task_id))
        if raw is None:
            return None
        try:
            return self._decoder.decode(raw)
        except msgspec.DecodeError:
            log.warning("unreadable ledger record ignored", extra={"ledger_task": task_id})
            return None

    async def record(self, outcome: StoredOutcome) -> None:
        await self._client.set(
            self._key("outcome", outcome.result.task_id), self._encoder.encode(outcome), px=self._outcome_ttl_ms
        )

    async def mark_published(self, outcome: StoredOutcome) -> None:
        await self.record(msgspec.structs.replace(outcome, published=True))

    async def attempts_key(self) -> bytes:
        """The deployment's key for sealing attempt counts (``consumer.attempts``): created by
        the first worker that asks, the same for every worker of the namespace afterwards."""
        key = self._key("secret", "attempts")
        await self._client.set(key, secrets.token_hex(32), nx=True)
        value = await self._client.get(key)
        if not value:
            raise RuntimeError("the attempts key vanished from Valkey as it was created")
        return bytes(value)

    # --- leases ---
    async def try_lease(self, task_id: str, owner: str) -> Lease | None:
        """The lease of ``task_id`` for ``owner``, or None when someone holds it already."""
        token = f"{owner}:{uuid.uuid4().hex}"
        acquired = await self._client.set(self._key("lease", task_id), token, nx=True, px=self.lease_ms)
        return Lease(self, task_id, token) if acquired else None

    async def lease_remaining(self, task_id: str) -> float:
        """Seconds until the current lease of ``task_id`` expires (0 when there is none)."""
        ms = await self._client.pttl(self._key("lease", task_id))
        return max(0.0, ms / 1000) if ms and ms > 0 else 0.0

    async def lease_holder(self, task_id: str) -> str | None:
        raw = await self._client.get(self._key("lease", task_id))
        return raw.decode().rsplit(":", 1)[0] if raw else None

    async def _renew_lease(self, lease: Lease) -> bool:
        return bool(await self._renew(keys=[self._key("lease", lease.task_id)], args=[lease.token, self.lease_ms]))

    async def _release_lease(self, lease: Lease) -> None:
        await self._release(keys=[self._key("lease", lease.task_id)], args=[lease.token])


class Lease:
    """A held lease; ``async with lease:`` keeps renewing it and releases it at the end."""

    def __init__(self, ledger: Ledger, task_id: str, token: str) -> None:
        self._ledger = ledger
        self.task_id = task_id
        self.token = token
        self.lost = False  # set when a renewal found the lease taken over (we were too slow)
        self._renewer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Lease:
        self._renewer = asyncio.create_task(self._keep_renewed(), name=f"lease-{self.task_id}")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        await self.release()

    async def release(self) -> None:
        try:
            await self._ledger._release_lease(self)
        except Exception as exc:  # the lease then simply expires
            log.warning("could not release the task lease: %s", exc)

    async def _keep_renewed(self) -> None:
        interval = self._ledger.lease_ms / 3000
        while True:
            await asyncio.sleep(interval)
            try:
                if not await self._ledger._renew_lease(self):
                    self.lost = True
                    log.warning("the task lease expired before it was renewed; another worker may start it")
                    return
            except Exception as exc:
                log.warning("could not renew the task lease: %s", exc)
