"""Dagger modules a test registers: how a served module shows up in the GraphQL schema.

After ``dag.module_source(ref).as_module().serve()`` the real engine adds a Query field named
after the module (camelCase) whose object has one field per function (camelCase), with typed
arguments. Here a function is a Python callable; its parameters and annotations give the
GraphQL arguments (str -> String, int -> Int, float -> Float, bool -> Boolean, list[str] ->
[String!], anything else -> JSON), a parameter with a default is optional.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable
from typing import Any

_SCALARS = {"str": "String", "int": "Int", "float": "Float", "bool": "Boolean", "list[str]": "[String!]"}


def camel(name: str) -> str:
    parts = [p for p in re.split(r"[-_\s]+", name) if p]
    if not parts:
        return name
    return parts[0][:1].lower() + parts[0][1:] + "".join(p[:1].upper() + p[1:] for p in parts[1:])


def pascal(name: str) -> str:
    lower = camel(name)
    return lower[:1].upper() + lower[1:]


def _graphql_type(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty:
        return "JSON"
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    if not isinstance(annotation, str) and getattr(annotation, "__args__", None):
        text = str(annotation)
    return _SCALARS.get(text.replace("typing.", "").replace("builtins.", ""), "JSON")


@dataclasses.dataclass(frozen=True, slots=True)
class FunctionSpec:
    graphql_name: str
    call: Callable[..., Any]
    args: dict[str, tuple[str, str, bool]]  # graphql arg name -> (python name, type, required)
    returns: str


@dataclasses.dataclass(frozen=True, slots=True)
class ModuleSpec:
    ref: str
    name: str
    functions: dict[str, FunctionSpec]

    @property
    def field_name(self) -> str:
        return camel(self.name)

    @property
    def type_name(self) -> str:
        return pascal(self.name)


def module_spec(ref: str, name: str, functions: dict[str, Callable[..., Any]]) -> ModuleSpec:
    specs: dict[str, FunctionSpec] = {}
    for fn_name, fn in functions.items():
        signature = inspect.signature(fn)
        args: dict[str, tuple[str, str, bool]] = {}
        for param in signature.parameters.values():
            if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                continue
            required = param.default is inspect.Parameter.empty
            args[camel(param.name)] = (param.name, _graphql_type(param.annotation), required)
        specs[camel(fn_name)] = FunctionSpec(camel(fn_name), fn, args, _graphql_type(signature.return_annotation))
    return ModuleSpec(ref=ref, name=name, functions=specs)


def module_sdl(modules: list[ModuleSpec]) -> str:
    """Schema additions for served modules."""
    if not modules:
        return ""
    lines = ["extend type Query {"]
    lines += [f"  {m.field_name}: {m.type_name}!" for m in modules]
    lines.append("}")
    for m in modules:
        lines.append(f"type {m.type_name} {{")
        for fn in m.functions.values():
            args = ", ".join(
                f"{name}: {type_}{'!' if required else ''}" for name, (_, type_, required) in fn.args.items()
            )
            nullable = fn.returns == "JSON"  # a function may return nothing
            lines.append(f"  {fn.graphql_name}{f'({args})' if args else ''}: {fn.returns}{'' if nullable else '!'}")
        lines.append("}")
    return "\n".join(lines)
