"""What the console has seen since it started: a bounded record per task, a bounded flow of
events, and per-minute counts of outcomes. Pure data, no I/O: the hub feeds it, pages read it."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from schemas import ExecutionResult, StatusEvent, TaskState

DEFAULT_TASKS = 10_000  # tasks remembered (least recently heard of forgotten first)
DEFAULT_FLOW = 2_000  # events in the live flow
TIMELINE_LIMIT = 300  # timeline entries kept per task (heartbeats are folded, so this is plenty)
RATE_MINUTES = 30


@dataclass
class TimelineEntry:
    """One step in a task's life. Consecutive heartbeats of one attempt fold into one entry."""

    at: datetime
    state: str  # a TaskState value, or "result"
    attempt: int
    worker_id: str | None
    detail: str | None = None
    count: int = 1  # heartbeats folded into this entry
    last_at: datetime | None = None


@dataclass
class TaskRecord:
    task_id: str
    first_seen: datetime
    last_seen: datetime
    timeline: list[TimelineEntry] = field(default_factory=list)
    results: list[ExecutionResult] = field(default_factory=list)
    dropped: int = 0  # timeline entries dropped for the bound

    @property
    def result(self) -> ExecutionResult | None:
        return self.results[-1] if self.results else None

    @property
    def execution_type(self) -> str | None:
        for result in reversed(self.results):
            if result.execution_type is not None:
                return result.execution_type.value
        return None

    @property
    def state(self) -> str:
        """The latest known state (a result's outcome wins over status events; a heartbeat says
        it is running)."""
        if not self.timeline:
            return "unknown"
        last = self.timeline[-1].state
        if last == "result":
            return self.outcome or "result"
        return TaskState.RUNNING.value if last == TaskState.HEARTBEAT.value else last

    @property
    def outcome(self) -> str | None:
        result = self.result
        return None if result is None else result.outcome.value

    @property
    def attempts(self) -> int:
        return max([e.attempt for e in self.timeline] + [r.attempts for r in self.results] + [0])

    @property
    def worker_id(self) -> str | None:
        for entry in reversed(self.timeline):
            if entry.worker_id:
                return entry.worker_id
        return None

    def add_status(self, event: StatusEvent, now: datetime) -> None:
        last = self.timeline[-1] if self.timeline else None
        if (
            event.state == TaskState.HEARTBEAT
            and last is not None
            and last.state == TaskState.HEARTBEAT.value
            and last.attempt == event.attempt
        ):
            last.count += 1
            last.last_at = event.at
        else:
            self._append(TimelineEntry(event.at, event.state.value, event.attempt, event.worker_id, event.detail))
        self.last_seen = now

    def add_result(self, result: ExecutionResult, now: datetime) -> None:
        self.results.append(result)
        del self.results[:-20]  # a task's results: duplicates and replays, bounded
        at = result.finished_at or now
        detail = None if result.success else f"{_category(result)}: {result.error or ''}"
        self._append(TimelineEntry(at, "result", result.attempts, result.worker_id, detail))
        self.last_seen = now

    def _append(self, entry: TimelineEntry) -> None:
        self.timeline.append(entry)
        if len(self.timeline) > TIMELINE_LIMIT:
            del self.timeline[0]
            self.dropped += 1


@dataclass(frozen=True)
class FlowEntry:
    """A row of the live flow."""

    seen: datetime  # the console's clock
    task_id: str
    kind: str  # "result" or "status"
    state: str  # the result's outcome, or the status event's state
    attempt: int
    worker_id: str | None
    execution_type: str | None = None
    detail: str | None = None
    category: str | None = None
    duration_ms: int | None = None
    cached: bool = False


@dataclass(frozen=True)
class FlowFilter:
    execution_type: str | None = None
    outcome: str | None = None  # succeeded | failed: of the task's result
    task_id: str | None = None  # a substring of the task id
    kind: str | None = None  # result | status

    def matches(self, entry: FlowEntry, record: TaskRecord | None) -> bool:
        if self.kind and entry.kind != self.kind:
            return False
        if self.task_id and self.task_id not in entry.task_id:
            return False
        if self.execution_type:
            # Status events carry no type: it is known once the task's result is in.
            known = entry.execution_type or (record.execution_type if record else None)
            if known != self.execution_type:
                return False
        if self.outcome:
            known = entry.state if entry.kind == "result" else (record.outcome if record else None)
            if known != self.outcome:
                return False
        return True


class RateCounter:
    """Succeeded/failed results per minute over the last ``minutes`` minutes (console clock)."""

    def __init__(self, minutes: int = RATE_MINUTES) -> None:
        self.minutes = minutes
        self.counts: dict[datetime, list[int]] = {}

    def add(self, success: bool, now: datetime) -> None:
        minute = now.replace(second=0, microsecond=0)
        self.counts.setdefault(minute, [0, 0])[0 if success else 1] += 1
        oldest = minute - timedelta(minutes=self.minutes)
        for key in [k for k in self.counts if k <= oldest]:
            del self.counts[key]

    def series(self, now: datetime) -> list[tuple[datetime, int, int]]:
        """(minute, succeeded, failed), oldest first, the current minute last."""
        minute = now.replace(second=0, microsecond=0)
        out = []
        for back in range(self.minutes - 1, -1, -1):
            at = minute - timedelta(minutes=back)
            ok, failed = self.counts.get(at, (0, 0))
            out.append((at, ok, failed))
        return out


class History:
    """Bounded: ``max_tasks`` task records and ``max_flow`` flow rows; the oldest go first."""

    def __init__(self, max_tasks: int = DEFAULT_TASKS, max_flow: int = DEFAULT_FLOW) -> None:
        self.max_tasks = max_tasks
        self.tasks: OrderedDict[str, TaskRecord] = OrderedDict()
        self.flow: deque[FlowEntry] = deque(maxlen=max_flow)
        self.rate = RateCounter()
        self.results_seen = 0
        self.events_seen = 0

    def _record(self, task_id: str, now: datetime) -> TaskRecord:
        record = self.tasks.get(task_id)
        if record is None:
            record = self.tasks[task_id] = TaskRecord(task_id, now, now)
            while len(self.tasks) > self.max_tasks:
                self.tasks.popitem(last=False)
        else:
            self.tasks.move_to_end(task_id)
        return record

    def add_status(self, event: StatusEvent, now: datetime | None = None) -> None:
        now = now or datetime.now(UTC)
        self.events_seen += 1
        record = self._record(event.task_id, now)
        record.add_status(event, now)
        if event.state == TaskState.HEARTBEAT and self.flow and _same_heartbeat(self.flow[-1], event):
            return  # the flow shows a running task's heartbeats once, not every interval
        self.flow.append(
            FlowEntry(
                now, event.task_id, "status", event.state.value, event.attempt, event.worker_id, None, event.detail
            )
        )

    def add_result(self, result: ExecutionResult, now: datetime | None = None) -> bool:
        """Record ``result``; False (nothing recorded) when it is one already recorded."""
        now = now or datetime.now(UTC)
        known = self.tasks.get(result.task_id)
        if known is not None and result in known.results:
            return False
        # A result read back from the results stream counts in the minute it finished.
        at = min(result.finished_at, now) if result.finished_at else now
        self.results_seen += 1
        self._record(result.task_id, now).add_result(result, now)
        self.rate.add(result.success, at)
        self.flow.append(
            FlowEntry(
                at,
                result.task_id,
                "result",
                result.outcome.value,
                result.attempts,
                result.worker_id,
                result.execution_type.value if result.execution_type else None,
                result.error,
                _category(result) if not result.success else None,
                result.duration_ms,
                result.cached,
            )
        )
        return True

    def add_note(self, task_id: str, state: str, detail: str | None = None, now: datetime | None = None) -> None:
        """Something the console itself did with a task (``submitted``): on its timeline only."""
        now = now or datetime.now(UTC)
        record = self._record(task_id, now)
        record._append(TimelineEntry(now, state, 0, None, detail))

    def get(self, task_id: str) -> TaskRecord | None:
        return self.tasks.get(task_id)

    def recent(self, flow_filter: FlowFilter, limit: int) -> list[FlowEntry]:
        """The newest ``limit`` flow rows that match, newest first."""
        out: list[FlowEntry] = []
        for entry in reversed(self.flow):
            if flow_filter.matches(entry, self.tasks.get(entry.task_id)):
                out.append(entry)
                if len(out) >= limit:
                    break
        return out

    def execution_types(self) -> Iterable[str]:
        return sorted({e.execution_type for e in self.flow if e.execution_type})


def _same_heartbeat(entry: FlowEntry, event: StatusEvent) -> bool:
    return (
        entry.task_id == event.task_id and entry.state == TaskState.HEARTBEAT.value and entry.attempt == event.attempt
    )


def _category(result: ExecutionResult) -> str:
    return result.error_category.value if result.error_category else "failed"
