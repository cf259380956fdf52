"""Checking queries against the real engine's schema, so the subset cannot drift from it.

A query our subset accepts but the real v0.21.8 schema rejects would pass tests here and fail
against a real engine; such queries are recorded in ``engine.query_errors``.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import graphql

SCHEMA_NAME = "schema-v0.21.8.graphqls"
_REPO_ROOT = Path(__file__).resolve().parents[2]
_lock = threading.Lock()
_cache: dict[str, graphql.GraphQLSchema | None] = {}


def real_schema_path() -> Path | None:
    """``$DAGGER_REAL_SCHEMA``, else ``/work/shared/dagger/``, else ``../shared/dagger/`` next to
    the clone (CI checks the repository out beside ``shared/``)."""
    candidates = [
        os.environ.get("DAGGER_REAL_SCHEMA", ""),
        f"/work/shared/dagger/{SCHEMA_NAME}",
        str(_REPO_ROOT.parent / "shared" / "dagger" / SCHEMA_NAME),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def real_schema() -> graphql.GraphQLSchema | None:
    with _lock:
        if "schema" not in _cache:
            path = real_schema_path()
            _cache["schema"] = graphql.build_schema(path.read_text(encoding="utf-8")) if path else None
        return _cache["schema"]


def _redacted(document: graphql.DocumentNode) -> str:
    """The query with string values hidden: queries carry secrets inline."""

    class Redact(graphql.Visitor):
        def enter_string_value(self, node: graphql.StringValueNode, *_: object) -> graphql.StringValueNode:
            return graphql.StringValueNode(value="***")

    redacted = graphql.visit(document, Redact())
    return graphql.print_ast(redacted)


def top_level_fields(document: graphql.DocumentNode) -> set[str]:
    names: set[str] = set()
    for definition in document.definitions:
        if isinstance(definition, graphql.OperationDefinitionNode):
            for selection in definition.selection_set.selections:
                if isinstance(selection, graphql.FieldNode):
                    names.add(selection.name.value)
    return names


def problems(document: graphql.DocumentNode) -> tuple[tuple[str, ...], str] | None:
    """(messages, redacted query) when the real schema rejects ``document``; None otherwise
    (also when the real schema is not available)."""
    schema = real_schema()
    if schema is None:
        return None
    errors = graphql.validate(schema, document)
    if not errors:
        return None
    return tuple(e.message for e in errors), _redacted(document)
