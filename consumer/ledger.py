"""The idempotency ledger in Valkey: what became of each task id, and who is running it now.

- The *outcome* of a finished task (its ``ExecutionResult``) is stored under the task id before
  the command is acked. A redelivered or duplicate command of that task republishes the stored
  result instead of running again; a dead-lettered failure runs again only when it is replayed
  (a new ``x-replay-id``).
- A *lease* (``SET NX PX``) marks a task as running on one worker. The running worker renews it
  every third of its lifetime (all of its leases in one round trip); when that worker dies the
  lease expires and another one takes over. A lease is renewed for no longer than its holder may
  take (``hold_limit``): a handler stuck past that lets it lapse, so a copy of the command can run.
  Taking a lease also increments the task's *fence*: the lease's fencing token.
- An outcome is recorded by one script (``_RECORD``): only by the holder of the latest fence (a
  worker whose lease lapsed and was taken over is refused), and only when the task has no final
  outcome yet (a dead-lettered failure gives way to a replay). So the first final outcome of a task
  is the only one, fleet-wide; a refused worker publishes nothing.
- Whether the outcome has been published is a key of its own, set after the broker confirmed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import secrets
import time
import uuid
from types import TracebackType
from typing import NamedTuple

import msgspec
import valkey.asyncio as valkey

from consumer.embedded_valkey import CLIENT_NAME
from schemas import ExecutionResult

log = logging.getLogger("dagger_adapter.ledger")

# Renew only leases we still own: another worker may hold one after ours expired. A lease that
# vanished (expired during a stall, or Valkey restarted) is taken back when free.
# KEYS: leases. ARGV: lease ms, then one token per key. Returns 1 (ours) or 0 (taken) per key.
_RENEW_ALL = """
local renewed = {}
for i, key in ipairs(KEYS) do
  local holder = redis.call('GET', key)
  if holder == ARGV[i + 1] then
    redis.call('PEXPIRE', key, ARGV[1])
    renewed[i] = 1
  elseif not holder then
    redis.call('SET', key, ARGV[i + 1], 'PX', ARGV[1])
    renewed[i] = 1
  else
    renewed[i] = 0
  end
end
return renewed
"""
# Take the lease and the next fencing token, and read the task's outcome, in one step.
# KEYS: lease, fence, outcome, published. ARGV: token, lease ms, fence TTL ms.
# Returns {fence (0: someone else holds the lease), outcome or nil, published or nil}.
_ACQUIRE = """
local fence = 0
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  fence = redis.call('INCR', KEYS[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
return {fence, redis.call('GET', KEYS[3]), redis.call('GET', KEYS[4])}
"""
# KEYS: outcome, fence, published. ARGV: our fence, the record, its TTL (ms), the replay id ('' for none).
# Returns {2, existing record} when another outcome stands, {0} when fenced out (a later lease was
# taken), {1} when recorded.
_RECORD = """
local existing = redis.call('GET', KEYS[1])
if existing then
  local ok, record = pcall(cjson.decode, existing)
  local replayed = ok and type(record) == 'table' and type(record.result) == 'table'
    and record.result.success == false and ARGV[4] ~= '' and record.replay_id ~= ARGV[4]
  if not replayed then
    return {2, existing}
  end
end
if tonumber(redis.call('GET', KEYS[2]) or '-1') ~= tonumber(ARGV[1]) then
  return {0}
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[3])
return {1}
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
# Mark the outcome published and release our lease in one step.
# KEYS: published, lease. ARGV: message id, TTL ms, lease token.
_PUBLISHED_AND_RELEASE = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('DEL', KEYS[2])
end
return 1
"""


# Connections to Valkey per ledger, and how long a command may wait for one of them.
MAX_CONNECTIONS = 64
CONNECTION_WAIT_SECONDS = 30


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


class Recorded(enum.Enum):
    """What became of ``Ledger.record_first``."""

    RECORDED = "recorded"  # ours is the task's outcome
    FENCED = "fenced"  # our lease lapsed and a later one was taken: ours is not the outcome
    EXISTS = "exists"  # the task already had a final outcome: it stands


class Ledger:
    def __init__(self, client: valkey.Valkey, *, namespace: str, lease_seconds: float, outcome_ttl_seconds: float):
        self._client = client
        self._namespace = namespace
        self.lease_ms = max(1, round(lease_seconds * 1000))
        self._outcome_ttl_ms = max(1, round(outcome_ttl_seconds * 1000))
        self._renew_all = client.register_script(_RENEW_ALL)
        self._acquire = client.register_script(_ACQUIRE)
        self._record = client.register_script(_RECORD)
        self._release = client.register_script(_RELEASE)
        self._published_and_release = client.register_script(_PUBLISHED_AND_RELEASE)
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder(StoredOutcome)
        self._held: dict[str, Lease] = {}  # token -> a lease being kept
        self._keeper: asyncio.Task[None] | None = None

    @classmethod
    def from_url(cls, url: str, *, namespace: str, lease_seconds: float, outcome_ttl_seconds: float) -> Ledger:
        # A bounded pool: a burst of a thousand commands waits its turn for a connection instead
        # of opening (and naming) a thousand of them in the same moment.
        pool = valkey.BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=CONNECTION_WAIT_SECONDS,
            socket_timeout=10,
            socket_connect_timeout=10,
            client_name=CLIENT_NAME,
        )
        client = valkey.Valkey.from_pool(pool)
        return cls(client, namespace=namespace, lease_seconds=lease_seconds, outcome_ttl_seconds=outcome_ttl_seconds)

    async def ping(self) -> None:
        await self._client.ping()

    async def close(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        await self._client.aclose()

    def _key(self, kind: str, task_id: str) -> str:
        return f"dagger-adapter:{self._namespace}:{kind}:{task_id}"

    # --- outcomes ---
    async def outcome(self, task_id: str) -> StoredOutcome | None:
        raw, published = await self._client.mget(self._key("outcome", task_id), self._key("published", task_id))
        return self._stored(task_id, raw, published)

    def _stored(self, task_id: str, raw: bytes | None, published: bytes | None) -> StoredOutcome | None:
        if raw is None:
            return None
        try:
            stored = self._decoder.decode(raw)
        except msgspec.DecodeError:
            log.warning("unreadable ledger record ignored", extra={"ledger_task": task_id})
            return None
        return msgspec.structs.replace(stored, published=True) if published is not None else stored

    async def record_first(self, outcome: StoredOutcome, *, fence: int) -> tuple[Recorded, StoredOutcome | None]:
        """Record ``outcome`` as its task's final outcome, atomically: only under fence ``fence``
        and only when none stands. With ``EXISTS`` comes the outcome that stands."""
        task_id = outcome.result.task_id
        reply = await self._record(
            keys=[self._key("outcome", task_id), self._key("fence", task_id), self._key("published", task_id)],
            args=[
                fence,
                self._encoder.encode(msgspec.structs.replace(outcome, published=False)),
                self._outcome_ttl_ms,
                outcome.replay_id or "",
            ],
        )
        code = int(reply[0])
        if code == 1:
            return Recorded.RECORDED, None
        if code == 0:
            return Recorded.FENCED, None
        try:
            return Recorded.EXISTS, self._decoder.decode(reply[1])
        except msgspec.DecodeError:
            return Recorded.EXISTS, None

    async def mark_published(self, outcome: StoredOutcome, *, releasing: Lease | None = None) -> None:
        """The outcome is out (the broker confirmed it). With ``releasing``, that lease is released
        in the same round trip (and its own release on exit is skipped)."""
        task_id = outcome.result.task_id
        if releasing is None:
            await self._client.set(self._key("published", task_id), outcome.message_id or "", px=self._outcome_ttl_ms)
            return
        await self._published_and_release(
            keys=[self._key("published", task_id), self._key("lease", task_id)],
            args=[outcome.message_id or "", self._outcome_ttl_ms, releasing.token],
        )
        releasing.released = True

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
    async def try_lease(self, task_id: str, owner: str, *, hold_limit: float | None = None) -> Lease | None:
        """The lease of ``task_id`` for ``owner``, or None when someone holds it already."""
        return (await self.acquire(task_id, owner, hold_limit=hold_limit)).lease

    async def acquire(self, task_id: str, owner: str, *, hold_limit: float | None = None) -> Acquired:
        """Try to take the lease of ``task_id`` for ``owner``, and read the task's outcome as it
        stands at that moment, in one round trip. ``hold_limit``: the longest (seconds) the lease
        is renewed for; None, for as long as it is kept."""
        token = f"{owner}:{uuid.uuid4().hex}"
        fence, raw, published = await self._acquire(
            keys=[
                self._key("lease", task_id),
                self._key("fence", task_id),
                self._key("outcome", task_id),
                self._key("published", task_id),
            ],
            args=[token, self.lease_ms, self._outcome_ttl_ms],
        )
        lease = Lease(self, task_id, token, int(fence), hold_limit) if int(fence) else None
        return Acquired(lease, self._stored(task_id, raw, published))

    async def lease_remaining(self, task_id: str) -> float:
        """Seconds until the current lease of ``task_id`` expires (0 when there is none)."""
        ms = await self._client.pttl(self._key("lease", task_id))
        return max(0.0, ms / 1000) if ms and ms > 0 else 0.0

    async def lease_holder(self, task_id: str) -> str | None:
        raw = await self._client.get(self._key("lease", task_id))
        return raw.decode().rsplit(":", 1)[0] if raw else None

    # --- keeping leases: one task renews every lease this ledger keeps, a round trip per batch ---
    def _keep(self, lease: Lease) -> None:
        self._held[lease.token] = lease
        if self._keeper is None or self._keeper.done():
            self._keeper = asyncio.create_task(self._keep_renewed(), name="lease-keeper")

    def _let_go(self, lease: Lease) -> None:
        self._held.pop(lease.token, None)

    async def _keep_renewed(self) -> None:
        interval = self.lease_ms / 3000
        while self._held:
            await asyncio.sleep(interval)
            now = time.monotonic()
            due = []
            for lease in list(self._held.values()):
                if lease.outlived(now):
                    self._let_go(lease)
                else:
                    due.append(lease)
            for start in range(0, len(due), RENEW_BATCH):
                await self._renew_batch(due[start : start + RENEW_BATCH])

    async def _renew_batch(self, leases: list[Lease]) -> None:
        try:
            renewed = await self._renew_all(
                keys=[self._key("lease", lease.task_id) for lease in leases],
                args=[self.lease_ms, *(lease.token for lease in leases)],
            )
        except Exception as exc:
            log.warning("could not renew %d task lease(s): %s", len(leases), exc)
            now = time.monotonic()
            for lease in leases:
                if now - lease.renewed_at >= self.lease_ms / 1000:
                    lease.lost = True
                    self._let_go(lease)
                    log.warning(
                        "the task lease ran out unrenewed; another worker may start it",
                        extra={"ledger_task": lease.task_id},
                    )
            return
        now = time.monotonic()
        for lease, ours in zip(leases, renewed, strict=True):
            if int(ours):
                lease.renewed_at = now
            elif lease.token in self._held:  # not let go meanwhile: really taken over
                lease.lost = True
                self._let_go(lease)
                log.warning(
                    "the task lease expired before it was renewed; another worker may start it",
                    extra={"ledger_task": lease.task_id},
                )

    async def _release_lease(self, lease: Lease) -> None:
        await self._release(keys=[self._key("lease", lease.task_id)], args=[lease.token])


# Leases renewed per round trip (one script call): a bound on how long one call holds Valkey.
RENEW_BATCH = 500


class Acquired(NamedTuple):
    lease: Lease | None  # None: another worker holds the task's lease
    outcome: StoredOutcome | None  # the task's outcome when the lease was tried


class Lease:
    """A held lease; ``async with lease:`` keeps it renewed (up to its hold limit) and releases it
    at the end."""

    def __init__(self, ledger: Ledger, task_id: str, token: str, fence: int, hold_limit: float | None = None) -> None:
        self._ledger = ledger
        self.task_id = task_id
        self.token = token
        self.fence = fence  # the fencing token: an outcome is recorded only under the latest one
        # Set when a renewal found the lease taken over, or none succeeded for a whole lease
        # lifetime (Valkey unreachable), or it was held past its hold limit: the task may be
        # running elsewhere now.
        self.lost = False
        self.released = False  # released already (with the outcome marked published)
        self.renewed_at = time.monotonic()
        self._renew_until = None if hold_limit is None else self.renewed_at + hold_limit

    def outlived(self, now: float) -> bool:
        """Held past its hold limit (its handler is stuck): it is let go, to lapse."""
        if self._renew_until is None or now < self._renew_until:
            return False
        if not self.lost:
            self.lost = True
            log.warning(
                "the task lease was held longer than handling a command may take; letting it lapse so that "
                "a copy of the command can run (an outcome of ours is then fenced out)",
                extra={"ledger_task": self.task_id},
            )
        return True

    async def __aenter__(self) -> Lease:
        self._ledger._keep(self)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._ledger._let_go(self)
        await self.release()

    async def release(self) -> None:
        if self.released:
            return
        try:
            await self._ledger._release_lease(self)
        except Exception as exc:  # the lease then simply expires
            log.warning("could not release the task lease: %s", exc)
