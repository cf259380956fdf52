"""``dagger-adapter schema export``: JSON Schema per message and an AsyncAPI 3 document."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import msgspec

from consumer.cli.common import config_from, die
from consumer.config import topology_for
from consumer.version import package_version
from schemas.jsonschema import json_schemas
from topology.asyncapi import asyncapi_document


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("schema", help="export the wire contract")
    verbs = parser.add_subparsers(dest="schema_verb", metavar="ACTION", required=True)
    e = verbs.add_parser("export", help="write <Message>.schema.json files and asyncapi.json")
    e.add_argument("-o", "--output", default="schema-out", help="output directory (default: schema-out)")
    e.set_defaults(handler=run_export)


def _pretty(document: Any) -> bytes:
    return msgspec.json.format(msgspec.json.encode(document), indent=2) + b"\n"


def run_export(args: argparse.Namespace) -> int:
    out = Path(args.output)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        die(f"cannot create {out}: {exc.strerror}")
    written = []
    for name, schema in json_schemas().items():
        path = out / f"{name}.schema.json"
        path.write_bytes(_pretty(schema))
        written.append(path)
    config = config_from(args)
    doc = asyncapi_document(topology_for(config), package_version(), config.amqp_url)
    path = out / "asyncapi.json"
    path.write_bytes(_pretty(doc))
    written.append(path)
    for p in written:
        print(p)
    return 0
