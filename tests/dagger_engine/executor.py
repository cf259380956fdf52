"""Running one exec: pick its outcome (a test's rule or the default emulation), record it,
count it as executing while it lasts."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from tests.dagger_engine.commands import run_default
from tests.dagger_engine.filesystem import ContainerFS
from tests.dagger_engine.records import ExecAnswer, ExecMatch, ExecOutcome, ExecRecord, ExecRule
from tests.dagger_engine.server import CLIENT_GONE


class ExecCancelled(Exception):
    """The request that ran the exec was abandoned by its client: the exec is killed."""


class ExecRunner:
    def __init__(self, stopping: threading.Event) -> None:
        self._lock = threading.Lock()
        self._stopping = stopping
        self._rules: list[ExecRule] = []
        self.records: list[ExecRecord] = []
        self.current = 0
        self.max_concurrent = 0
        self._changed = threading.Condition(self._lock)

    def add_rule(self, match: ExecMatch, outcome: ExecAnswer, times: int | None = None) -> None:
        with self._lock:
            self._rules.append(ExecRule(match=match, outcome=outcome, remaining=times))

    def clear_rules(self) -> None:
        with self._lock:
            self._rules.clear()

    def _choose(self, record: ExecRecord) -> ExecRule | None:
        with self._lock:
            # The latest registration wins, so a test can override an earlier general rule.
            for rule in reversed(self._rules):
                if rule.matches(record):
                    if rule.remaining is not None:
                        rule.remaining -= 1
                    return rule
        return None

    def run(
        self,
        record: ExecRecord,
        fs: ContainerFS,
        plain_env: dict[str, str],
        scrub: Callable[[str], str],
        commands: frozenset[str] = frozenset(),
    ) -> ExecOutcome:
        """``plain_env`` is the environment with secret values, which the emulated command
        may print; ``scrub`` hides them again, as the real engine does with "***".
        ``commands`` are the image's (a rule's program exists whatever the image has); raises
        CommandNotFound when neither a rule nor the image has the executable."""
        with self._changed:
            record.started_at = time.time()
            self.records.append(record)
            self.current += 1
            self.max_concurrent = max(self.max_concurrent, self.current)
            self._changed.notify_all()
        try:
            rule = self._choose(record)
            if rule is None:
                outcome = run_default(record.args, fs, plain_env, record.stdin, commands)
            elif callable(rule.outcome):
                outcome = rule.outcome(record)
            else:
                outcome = ExecOutcome(
                    stdout=rule.outcome.stdout,
                    stderr=rule.outcome.stderr,
                    exit_code=rule.outcome.exit_code,
                    delay=rule.outcome.delay,
                    files=dict(rule.outcome.files),
                )
            if outcome.delay > 0:
                self._wait(outcome.delay)
            outcome.stdout, outcome.stderr = scrub(outcome.stdout), scrub(outcome.stderr)
            record.exit_code, record.stdout, record.stderr = outcome.exit_code, outcome.stdout, outcome.stderr
            return outcome
        finally:
            with self._changed:
                self.current -= 1
                record.finished_at = time.time()
                if record.exit_code is None:
                    record.exit_code = -1  # the rule raised: nothing ran
                self._changed.notify_all()

    def _wait(self, seconds: float) -> None:
        """The exec's run time; cut short by ``stop()``, cancelled when the client went away."""
        gone = CLIENT_GONE.get()
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self._stopping.wait(min(left, 0.05)):
                return
            if gone is not None and gone.is_set():
                raise ExecCancelled("context canceled: the client closed the request")

    def snapshot(self) -> list[ExecRecord]:
        with self._lock:
            return list(self.records)

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` holds (checked whenever an exec starts or ends)."""
        with self._changed:
            return self._changed.wait_for(predicate, timeout)
