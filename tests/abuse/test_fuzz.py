"""Property-based fuzzing of the decoder and the validation of parameters (hypothesis).

The default profile (``ci``) runs a few hundred examples in the normal suite; ``just fuzz``
runs the ``fuzz`` profile (tens of thousands) - see ``tests/abuse/conftest.py``."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from schemas import ExecutionType, InvalidMessage, decode_command, fingerprint, parse_parameters, peek
from schemas.limits import Limits, json_depth_exceeds
from tests.abuse.conftest import FUZZ_WORKER_SAMPLE
from tests.abuse.expect import Broker, invalid_dead_letters
from tests.abuse.strategies import deep_json, json_values, messages
from tests.dagger_engine import TestEngine
from tests.support.worker_process import Observer
from tests.test_worker import StartWorker


@given(messages)
def test_decoding_arbitrary_input_raises_nothing_but_invalid_message(data: bytes) -> None:
    try:
        command, params = decode_command(data)
    except InvalidMessage as exc:
        assert str(exc)  # always a reason
        return
    assert len(fingerprint(command, params)) == 64
    assert peek(data)["task_id"] == command.task_id


@given(messages)
def test_peek_never_raises(data: bytes) -> None:
    assert isinstance(peek(data), dict)


@given(st.sampled_from(list(ExecutionType)), st.dictionaries(st.text(max_size=20), json_values, max_size=8))
def test_parameter_validation_raises_nothing_but_invalid_message(
    kind: ExecutionType, parameters: dict[str, Any]
) -> None:
    try:
        parse_parameters(kind, parameters)
    except InvalidMessage as exc:
        assert str(exc)


@given(deep_json(), st.integers(min_value=4, max_value=200))
def test_the_depth_scanner_agrees_with_the_parser(data: bytes, limit: int) -> None:
    """Whatever the scanner lets through, msgspec decodes without running out of stack; what it
    refuses really is deeper than the limit."""
    import msgspec

    if json_depth_exceeds(data, limit):
        try:
            msgspec.json.decode(data, type=Any)  # type: ignore[arg-type]
        except RecursionError:
            return
        assert _depth(msgspec.json.decode(data)) > limit
    else:
        try:  # InvalidMessage at most, never RecursionError
            decode_command(data, Limits(max_json_depth=limit))
        except InvalidMessage:
            pass


def _depth(value: Any) -> int:
    depth, level = 0, [(value, 1)]
    while level:
        item, d = level.pop()
        if isinstance(item, (list, dict)):
            depth = max(depth, d)
            level.extend((v, d + 1) for v in (item.values() if isinstance(item, dict) else item))
    return depth


def sample_of_invalid_messages(count: int) -> list[bytes]:
    """``count`` messages hypothesis generates that the decoder refuses."""
    found: list[bytes] = []

    @settings(
        max_examples=count * 3,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(messages)
    def collect(data: bytes) -> None:
        if len(found) < count:
            try:
                decode_command(data)
            except InvalidMessage:
                found.append(data)

    collect()
    return found


async def test_a_sample_through_a_real_worker_ends_as_one_invalid_dead_letter_each(
    start_worker: StartWorker, observer: Observer, broker: Broker, dagger_engine: TestEngine
) -> None:
    sample = sample_of_invalid_messages(FUZZ_WORKER_SAMPLE)
    assert len(sample) >= FUZZ_WORKER_SAMPLE // 2
    worker = await start_worker()
    before = dagger_engine.request_count
    reasons = {}
    for body in sample:
        reasons[await broker.publish(body, "fuzz")] = ""  # any reason, but one (checked below)
    letters = await invalid_dead_letters(broker, observer, worker, reasons=reasons, timeout=120)
    assert all(why.error for why in letters.values())
    assert dagger_engine.execs == [] and dagger_engine.request_count == before
