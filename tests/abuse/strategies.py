"""Hypothesis strategies for what a hostile or careless publisher may send."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

# JSON values of every kind; strings include brackets, quotes and escapes (what a scanner of
# the raw bytes could trip over) and non-ASCII.
_text = st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from('[]{}"\\\n\t'), max_size=40)
json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | _text,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(_text, children, max_size=6),
    max_leaves=40,
)

_types = st.sampled_from(["dagger_pipeline", "containerized_workflow"]) | _text
_parameter_names = st.sampled_from(
    [
        "pipeline",
        "module",
        "function",
        "args",
        "environment",
        "secrets",
        "volumes",
        "inputs",
        "workflow_definition",
        "container_image",
        "command",
        "registry_auth",
        "enable_retry",
        "cache",
    ]
)
# Shaped like a command, with arbitrary values where the contract is strict: this is what
# exercises the validation of parameters rather than the JSON parser.
command_like: st.SearchStrategy[dict[str, Any]] = st.fixed_dictionaries(
    {"task_id": _text | json_values, "execution_type": _types},
    optional={
        "parameters": st.dictionaries(_parameter_names, json_values, max_size=5) | json_values,
        "reply_to": _text | json_values,
        "correlation_id": _text | json_values,
        "timeout_seconds": json_values,
        "priority": json_values,
        "schema_version": json_values,
    },
)


@st.composite
def deep_json(draw: st.DrawFn) -> bytes:
    """Arrays and objects nested up to 3,000 deep, with strings that look like brackets."""
    depth = draw(st.integers(min_value=1, max_value=3000))
    opens = draw(st.lists(st.sampled_from(["[", '{"k":', '["[[",', '{"\\\\":']), min_size=depth, max_size=depth))
    closes = ["]" if o.startswith("[") else "}" for o in reversed(opens)]
    inner = draw(st.sampled_from(["1", '"]]]"', '"\\""', "[]", "{}"]))
    wrapped = '{"task_id": "deep", "execution_type": "dagger_pipeline", "parameters": {"args": ' + "".join(opens)
    return (wrapped + inner + "".join(closes) + "}}").encode()


def as_json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


messages: st.SearchStrategy[bytes] = st.one_of(
    st.binary(max_size=2048),
    json_values.map(as_json),
    command_like.map(as_json),
    deep_json(),
)
