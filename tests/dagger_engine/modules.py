"""Dagger modules a test registers: how a served module shows up in the GraphQL schema.

After ``dag.module_source(ref).as_module().serve()`` the real engine adds a Query field named
after the module (camelCase) -- with the constructor's arguments, if it has one -- whose object
has one field per function (camelCase), with typed arguments. Here a function is a Python
callable; its parameters and annotations give the GraphQL arguments and return type:

- ``str``/``int``/``float``/``bool`` -> ``String``/``Int``/``Float``/``Boolean``, ``list[T]``
  -> ``[T!]``, ``T | None`` -> nullable; a parameter with a default is optional;
- an ``enum.Enum`` -> a module enum (values: member names; the function gets the member);
- the SDK's ``dagger.Directory``/``dagger.File``/``dagger.Container``/``dagger.Secret`` ->
  an argument given by ID (``ID!``), the function gets the engine's state object
  (``DirectoryState.files``, ``FileState.contents``, ...); as a return type ``Directory`` (the
  function returns ``{path: text}``) or ``File`` (it returns the text);
- a dataclass -> a module object type (as a return type; fields from the dataclass's fields);
- anything else -> ``JSON`` (a string of JSON text on the wire, nullable).

Module types are namespaced like the engine does: a type whose name does not start with the
module's is prefixed with it (``Report`` of module ``greeter`` is ``GreeterReport``). A
``constructor`` callable's parameters become the module field's arguments, and what it
returns is passed to every function whose first parameter is ``self``. Functions answer
scalars, lists, JSON, the two core types above and module objects; a query selecting an
object without sub-fields is refused by validation.

Function calls are cached like the engine caches them (v0.19+): a call with the same module,
constructor arguments, function and arguments is answered from the engine-wide cache without
running (``cache={"fn": "session"}`` caches per session, ``"never"`` never); a call that
raised is not cached.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

_SCALARS: dict[Any, str] = {str: "String", int: "Int", float: "Float", bool: "Boolean"}
_SCALAR_NAMES = {"str": "String", "int": "Int", "float": "Float", "bool": "Boolean", "list[str]": "[String!]"}
CORE_OBJECTS = {"Directory", "File", "Container", "Secret", "CacheVolume"}
# Function caching (engine v0.19+): calls are cached engine-wide by default; a function may be
# cached per session only, or never (``+cache="session"`` / ``+cache="never"`` in a module).
CACHE_POLICIES = ("default", "session", "never")


def camel(name: str) -> str:
    parts = [p for p in re.split(r"[-_\s]+", name) if p]
    if not parts:
        return name
    return parts[0][:1].lower() + parts[0][1:] + "".join(p[:1].upper() + p[1:] for p in parts[1:])


def pascal(name: str) -> str:
    lower = camel(name)
    return lower[:1].upper() + lower[1:]


@dataclasses.dataclass(frozen=True, slots=True)
class Arg:
    python_name: str
    type: str  # GraphQL type, with "!" when required
    kind: str = "value"  # value | enum | object (loaded by ID)
    enum: type[enum.Enum] | None = None
    object_type: str = ""  # the core type an ID argument stands for (Directory, ...)
    default: Any = inspect.Parameter.empty


@dataclasses.dataclass(frozen=True, slots=True)
class FunctionSpec:
    graphql_name: str
    call: Callable[..., Any]
    args: dict[str, Arg]  # by GraphQL name
    returns: str  # GraphQL type
    takes_self: bool = False
    cache: str = "default"  # the function's cache policy: default (engine-wide) | session | never


@dataclasses.dataclass(frozen=True, slots=True)
class ModuleSpec:
    ref: str
    name: str
    functions: dict[str, FunctionSpec]
    constructor: FunctionSpec | None = None
    extra_sdl: tuple[str, ...] = ()  # enums and object types of the module
    object_fields: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)  # type -> field -> attr

    @property
    def field_name(self) -> str:
        return camel(self.name)

    @property
    def type_name(self) -> str:
        return pascal(self.name)


class _Types:
    """Collects the module's own enums and object types while mapping annotations."""

    def __init__(self, module: str) -> None:
        self.module = pascal(module)
        self.sdl: dict[str, str] = {}
        self.fields: dict[str, dict[str, str]] = {}  # object type -> GraphQL field -> attribute

    def namespaced(self, name: str) -> str:
        name = pascal(name)
        return name if name.startswith(self.module) else self.module + name

    def graphql(self, annotation: Any, *, argument: bool) -> tuple[str, str, type[enum.Enum] | None]:
        """(type without the outer "!", kind, enum class)."""
        if isinstance(annotation, str):
            return _SCALAR_NAMES.get(annotation.replace("typing.", ""), "JSON"), "value", None
        if annotation in _SCALARS:
            return _SCALARS[annotation], "value", None
        origin = typing.get_origin(annotation)
        if origin is list:
            (item,) = typing.get_args(annotation) or (Any,)
            inner, kind, enum_class = self.graphql(item, argument=argument)
            return f"[{inner}!]", kind, enum_class
        if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
            name = self.namespaced(annotation.__name__)
            self.sdl[name] = f"enum {name} {{ {' '.join(annotation.__members__)} }}"
            return name, "enum", annotation
        if isinstance(annotation, type) and annotation.__name__ in CORE_OBJECTS:
            if argument:
                return "ID", "object", None
            return annotation.__name__, "value", None
        if isinstance(annotation, type) and dataclasses.is_dataclass(annotation) and not argument:
            name = self.namespaced(annotation.__name__)
            hints = typing.get_type_hints(annotation)
            fields = [
                f"  {camel(f.name)}: {self.type(hints[f.name], argument=False)}" for f in dataclasses.fields(annotation)
            ]
            self.sdl[name] = f"type {name} {{\n" + "\n".join(fields) + "\n}"
            self.fields[name] = {camel(f.name): f.name for f in dataclasses.fields(annotation)}
            return name, "value", None
        return "JSON", "value", None

    def type(self, annotation: Any, *, argument: bool) -> str:
        nullable = False
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            nullable = len(members) != len(typing.get_args(annotation))
            annotation = members[0] if len(members) == 1 else Any
        inner, _, _ = self.graphql(annotation, argument=argument)
        return inner if nullable or inner == "JSON" else inner + "!"


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # a local type the annotations cannot name: fall back to the text
        return dict(getattr(fn, "__annotations__", {}))


def _function(name: str, fn: Callable[..., Any], module_types: _Types) -> FunctionSpec:
    hints = _hints(fn)
    params = list(inspect.signature(fn).parameters.values())
    takes_self = bool(params) and params[0].name == "self"
    args: dict[str, Arg] = {}
    for param in params[1:] if takes_self else params:
        if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        annotation = hints.get(param.name, "JSON")
        arg_type = module_types.type(annotation, argument=True)
        if param.default is not inspect.Parameter.empty:
            arg_type = arg_type.removesuffix("!")
        base = (
            typing.get_args(annotation)[0]
            if typing.get_origin(annotation) in (typing.Union, types.UnionType)
            else annotation
        )
        _, kind, enum_class = module_types.graphql(base, argument=True)
        element = typing.get_args(base)[0] if typing.get_origin(base) is list else base
        object_type = getattr(element, "__name__", "") if kind == "object" else ""
        args[camel(param.name)] = Arg(param.name, arg_type, kind, enum_class, object_type, param.default)
    returns = module_types.type(hints.get("return", "JSON"), argument=False)
    return FunctionSpec(camel(name), fn, args, returns, takes_self)


def module_spec(
    ref: str,
    name: str,
    functions: dict[str, Callable[..., Any]],
    constructor: Callable[..., Any] | None = None,
    cache: Mapping[str, str] | None = None,
) -> ModuleSpec:
    module_types = _Types(name)
    specs: dict[str, FunctionSpec] = {}
    for fn_name, fn in functions.items():
        policy = (cache or {}).get(fn_name, "default")
        if policy not in CACHE_POLICIES:
            raise ValueError(f"cache policy of {fn_name!r}: one of {CACHE_POLICIES}, not {policy!r}")
        specs[camel(fn_name)] = dataclasses.replace(_function(fn_name, fn, module_types), cache=policy)
        if specs[camel(fn_name)].returns.rstrip("!") in {"Container", "Secret", "CacheVolume"}:
            raise ValueError(f"{fn_name!r}: returning a {specs[camel(fn_name)].returns} is not modelled")
    built = _function("constructor", constructor, module_types) if constructor is not None else None
    return ModuleSpec(ref, name, specs, built, tuple(module_types.sdl.values()), module_types.fields)


def _args_sdl(args: dict[str, Arg]) -> str:
    text = ", ".join(f"{name}: {arg.type}" for name, arg in args.items())
    return f"({text})" if text else ""


def module_sdl(modules: list[ModuleSpec]) -> str:
    """Schema additions for served modules."""
    if not modules:
        return ""
    lines = ["extend type Query {"]
    for m in modules:
        args = _args_sdl(m.constructor.args) if m.constructor else ""
        lines.append(f"  {m.field_name}{args}: {m.type_name}!")
    lines.append("}")
    for m in modules:
        lines.append(f"type {m.type_name} {{")
        for fn in m.functions.values():
            lines.append(f"  {fn.graphql_name}{_args_sdl(fn.args)}: {fn.returns}")
        lines.append("}")
        lines.extend(m.extra_sdl)
    return "\n".join(lines)
