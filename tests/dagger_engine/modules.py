"""Dagger modules a test registers: how a served module shows up in the GraphQL schema.

After ``dag.module_source(ref).as_module().serve()`` the real engine adds a Query field named
after the module (camelCase) whose object has one field per function (camelCase), with typed
arguments. Here a function is a Python callable; its parameters and annotations give the
GraphQL arguments (str -> String, int -> Int, float -> Float, bool -> Boolean, list[str] ->
[String!], an enum.Enum class -> an enum of the module, the core object names "Directory",
"File", "Container", "Secret", "CacheVolume", "Service" -> the object (as an argument: its ID),
anything else -> JSON), a parameter with a default is optional. A ``constructor`` callable
gives the module field's arguments; its result reaches every function whose first parameter
is named ``module``. ``typedefs.py`` serves the same as the module's type definitions.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import re
from collections.abc import Callable
from typing import Any

_SCALARS = {"str": "String", "int": "Int", "float": "Float", "bool": "Boolean", "list[str]": "[String!]"}
_OBJECTS = ("Container", "Directory", "File", "Secret", "CacheVolume", "Service")


def camel(name: str) -> str:
    parts = [p for p in re.split(r"[-_\s]+", name) if p]
    if not parts:
        return name
    return parts[0][:1].lower() + parts[0][1:] + "".join(p[:1].upper() + p[1:] for p in parts[1:])


def pascal(name: str) -> str:
    lower = camel(name)
    return lower[:1].upper() + lower[1:]


def _graphql_type(annotation: Any, *, argument: bool = False, module_type: str = "") -> str:
    if annotation is inspect.Parameter.empty:
        return "JSON"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return f"{module_type}{annotation.__name__}"
    if annotation in _OBJECTS:
        return "ID" if argument else str(annotation)
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
    takes_module: bool = False  # the first parameter, ``module``, gets the constructor's result


@dataclasses.dataclass(frozen=True, slots=True)
class ModuleSpec:
    ref: str
    name: str
    functions: dict[str, FunctionSpec]
    constructor: FunctionSpec | None = None
    enums: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)  # type name -> members

    @property
    def field_name(self) -> str:
        return camel(self.name)

    @property
    def type_name(self) -> str:
        return pascal(self.name)


def module_spec(
    ref: str, name: str, functions: dict[str, Callable[..., Any]], constructor: Callable[..., Any] | None = None
) -> ModuleSpec:
    module_type = pascal(name)
    enums: dict[str, tuple[str, ...]] = {}

    def function(fn_name: str, fn: Callable[..., Any]) -> FunctionSpec:
        try:  # annotations evaluated where they can be; "Directory" and friends stay strings
            signature = inspect.signature(fn, eval_str=True)
        except NameError:
            signature = inspect.signature(fn)
        args: dict[str, tuple[str, str, bool]] = {}
        params = list(signature.parameters.values())
        takes_module = bool(params) and params[0].name == "module"
        for param in params[1:] if takes_module else params:
            if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                continue
            required = param.default is inspect.Parameter.empty
            gql_type = _graphql_type(param.annotation, argument=True, module_type=module_type)
            args[camel(param.name)] = (param.name, gql_type, required)
        for annotation in [p.annotation for p in params] + [signature.return_annotation]:
            if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
                enums[f"{module_type}{annotation.__name__}"] = tuple(m.name for m in annotation)
        returns = _graphql_type(signature.return_annotation, module_type=module_type)
        return FunctionSpec(camel(fn_name), fn, args, returns, takes_module)

    specs = {camel(fn_name): function(fn_name, fn) for fn_name, fn in functions.items()}
    ctor = function(name, constructor) if constructor is not None else None
    return ModuleSpec(ref=ref, name=name, functions=specs, constructor=ctor, enums=enums)


def _arguments(fn: FunctionSpec) -> str:
    args = ", ".join(f"{name}: {type_}{'!' if required else ''}" for name, (_, type_, required) in fn.args.items())
    return f"({args})" if args else ""


def module_sdl(modules: list[ModuleSpec]) -> str:
    """Schema additions for served modules."""
    if not modules:
        return ""
    lines = ["extend type Query {"]
    lines += [f"  {m.field_name}{_arguments(m.constructor) if m.constructor else ''}: {m.type_name}!" for m in modules]
    lines.append("}")
    for m in modules:
        for enum_name, members in m.enums.items():
            lines.append(f"enum {enum_name} {{ {' '.join(members)} }}")
        lines.append(f"type {m.type_name} {{")
        for fn in m.functions.values():
            args = ", ".join(
                f"{name}: {type_}{'!' if required else ''}" for name, (_, type_, required) in fn.args.items()
            )
            nullable = fn.returns in ("JSON", "Void")  # a function may return nothing
            lines.append(f"  {fn.graphql_name}{f'({args})' if args else ''}: {fn.returns}{'' if nullable else '!'}")
        lines.append("}")
    return "\n".join(lines)
