"""Refusing queries the way a real engine does.

A real engine (dagql behind gqlgen's HTTP handler) parses and validates every query against
the schema its session has -- the core API plus the modules the session serves -- before
running anything. A query that does not parse or validate is answered with HTTP 422 and
``{"errors": [{"message", "locations", "extensions": {"code": "GRAPHQL_VALIDATION_FAILED"}}],
"data": null}`` (``GRAPHQL_PARSE_FAILED`` for a syntax error); a body that is not JSON gets
400. The SDK turns such an answer into ``dagger.QueryError``.

Rules: graphql-core's standard validation rules. The real engine switches two of them off
(values of the wrong type -- quoted enums, numbers as strings -- and selecting an object
without sub-fields); this engine keeps them, so it is stricter there, never more lenient.
Messages are graphql-core's (``Cannot query field 'x' on type 'Container'.``; the real engine
quotes with double quotes).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import graphql

from tests.dagger_engine.records import QueryProblem

VALIDATION_FAILED = "GRAPHQL_VALIDATION_FAILED"
PARSE_FAILED = "GRAPHQL_PARSE_FAILED"
_INTROSPECTION_FIELDS = {"__schema", "__type", "__typename"}


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    body: bytes
    problem: QueryProblem | None  # recorded for tests (None for a body that is not a query)


def error_body(message: str, code: str | None = None, errors: list[dict[str, Any]] | None = None) -> bytes:
    if errors is None:
        errors = [{"message": message, **({"extensions": {"code": code}} if code else {})}]
    return json.dumps({"errors": errors, "data": None}).encode()


def check(schema: graphql.GraphQLSchema, payload: dict[str, Any]) -> graphql.DocumentNode | Refusal:
    """The parsed document when ``payload`` holds a valid query, else the engine's refusal."""
    query = payload.get("query")
    if not isinstance(query, str) or not query.strip():
        return Refusal(422, error_body("no operation provided", VALIDATION_FAILED), QueryProblem(("no query",), ""))
    try:
        document = graphql.parse(query)
    except graphql.GraphQLError as bad:
        formatted = {**bad.formatted, "extensions": {"code": PARSE_FAILED}}
        return Refusal(422, error_body("", errors=[formatted]), QueryProblem((bad.message,), "<unparsable>"))
    errors = graphql.validate(schema, document)
    if not errors:
        return document
    formatted = [{**e.formatted, "extensions": {"code": VALIDATION_FAILED}} for e in errors]
    problem = QueryProblem(tuple(e.message for e in errors), redacted(document))
    return Refusal(422, error_body("", errors=formatted), problem)


def is_introspection(document: graphql.DocumentNode) -> bool:
    fields = top_level_fields(document)
    return bool(fields) and fields <= _INTROSPECTION_FIELDS


def redacted(document: graphql.DocumentNode) -> str:
    """The query with string values hidden: queries carry secrets inline."""

    class Redact(graphql.Visitor):
        def enter_string_value(self, node: graphql.StringValueNode, *_: object) -> graphql.StringValueNode:
            return graphql.StringValueNode(value="***")

    return graphql.print_ast(graphql.visit(document, Redact()))


def top_level_fields(document: graphql.DocumentNode) -> set[str]:
    names: set[str] = set()
    for definition in document.definitions:
        if isinstance(definition, graphql.OperationDefinitionNode):
            for selection in definition.selection_set.selections:
                if isinstance(selection, graphql.FieldNode):
                    names.add(selection.name.value)
    return names
