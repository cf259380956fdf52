"""How many attempts a command has had, as carried by the retry queues, and why the worker can
believe it.

A command that comes back from a retry tier carries ``x-attempts``. Anyone who may publish to the
tasks exchange can set that header too, so the worker seals the count it writes: an HMAC-SHA256
over the count and a digest of the body, keyed with a per-deployment key that lives in Valkey
(created once by the first worker, never sent over AMQP). A count without a valid seal, or on
another body, is not believed (the command counts as fresh); a sealed one is still capped at
``max_retries``. Tenants cannot read Valkey or the retry queues, so they can neither forge a seal
nor copy one from a retried message.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from schemas import headers as h

SEAL = "x-attempts-seal"


class AttemptSeal:
    def __init__(self, key: bytes, max_attempts_before: int) -> None:
        self._key = key
        self.max_attempts_before = max_attempts_before

    def seal(self, body: bytes, attempts: int) -> str:
        digest = hashlib.sha256(body).digest()
        return hmac.new(self._key, b"%d:" % attempts + digest, hashlib.sha256).hexdigest()

    def headers(self, body: bytes, attempts: int) -> dict[str, Any]:
        """The headers that carry ``attempts`` through a retry queue."""
        return {h.ATTEMPTS: attempts, SEAL: self.seal(body, attempts)}

    def attempts_before(self, body: bytes, headers: dict[str, Any]) -> int:
        """Attempts already made, as far as a sealed ``x-attempts`` says (0 for anything else)."""
        attempts, seal = headers.get(h.ATTEMPTS), headers.get(SEAL)
        if isinstance(seal, bytes):
            seal = seal.decode("ascii", "replace")
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts <= 0 or not isinstance(seal, str):
            return 0
        if not hmac.compare_digest(self.seal(body, attempts), seal):
            return 0
        return min(attempts, self.max_attempts_before)
