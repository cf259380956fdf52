"""A module's type definitions, as a client reads them from the engine before calling it:
``Module.objects`` -> ``TypeDef`` (``asObject``: ``ObjectTypeDef`` with ``functions`` and
``constructor``) -> ``Function`` (``name``, ``args``, ``returnType``) -> ``FunctionArg``
(``name``, ``typeDef``), with ``asList``/``asEnum``/``asScalar`` for argument and return types.

They are read off the Python functions a test registers (``modules.py``): ``str``/``int``/
``float``/``bool`` and ``list[str]`` are the built-in kinds, an ``enum.Enum`` class is an enum of
the module (named ``<Module><Class>`` as the real engine namespaces it), the names ``"Container"``,
``"Directory"``, ``"File"``, ``"Secret"``, ``"CacheVolume"`` and ``"Service"`` (as string
annotations) are the core object types, ``None`` is ``Void``, anything else ``JSON``. A parameter
with a default is optional.

Objects cross into a test's function as plain values: a ``Directory`` argument as its files
(``{path: text}``), a ``File`` as its text, a ``Secret`` as its plaintext, a ``CacheVolume`` as its
key; a function returning ``"Directory"`` returns ``{path: text}``, one returning ``"File"`` its
text.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
from typing import Any, ClassVar

import graphql

from tests.dagger_engine.modules import FunctionSpec, ModuleSpec
from tests.dagger_engine.resolvers import Info, _core, _load, _new, resolves
from tests.dagger_engine.state import CacheVolumeState, DirectoryState, FileState, ModuleState, Node, SecretState

OBJECTS = ("Container", "Directory", "File", "Secret", "CacheVolume", "Service")
_KINDS = {str: "STRING_KIND", int: "INTEGER_KIND", float: "FLOAT_KIND", bool: "BOOLEAN_KIND"}


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class TypeDefState(Node):
    graphql_type: ClassVar[str] = "TypeDef"
    kind: str
    name: str = ""
    optional: bool = False
    element: TypeDefState | None = None
    members: tuple[str, ...] = ()
    functions: tuple[FunctionState, ...] = ()
    constructor: FunctionState | None = None


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class FunctionState(Node):
    graphql_type: ClassVar[str] = "Function"
    name: str
    args: tuple[FunctionArgState, ...]
    returns: TypeDefState


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class FunctionArgState(Node):
    graphql_type: ClassVar[str] = "FunctionArg"
    name: str
    type_def: TypeDefState


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class EnumValueState(Node):
    graphql_type: ClassVar[str] = "EnumValueTypeDef"
    name: str


def signature(fn: Any) -> inspect.Signature:
    """``fn``'s signature with annotations evaluated where they can be (string annotations of
    the core object names stay strings)."""
    try:
        return inspect.signature(fn, eval_str=True)
    except NameError:
        return inspect.signature(fn)


def enum_type_name(module_type: str, cls: type[enum.Enum]) -> str:
    return f"{module_type}{cls.__name__}"


def _type_def(info: Info, annotation: Any, module_type: str, optional: bool) -> TypeDefState:
    def made(**kw: Any) -> TypeDefState:
        return _new(info, TypeDefState(optional=optional, **kw))

    if annotation in (None, "None", type(None)):
        return made(kind="VOID_KIND")
    if annotation in _KINDS:
        return made(kind=_KINDS[annotation])
    if annotation in ("str", "int", "float", "bool"):
        return made(kind=_KINDS[{"str": str, "int": int, "float": float, "bool": bool}[annotation]])
    if annotation in (list[str], "list[str]"):
        return made(kind="LIST_KIND", element=_type_def(info, str, module_type, False))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return made(
            kind="ENUM_KIND",
            name=enum_type_name(module_type, annotation),
            members=tuple(m.name for m in annotation),
        )
    if annotation in OBJECTS:
        return made(kind="OBJECT_KIND", name=annotation)
    return made(kind="SCALAR_KIND", name="JSON")


def _function(info: Info, spec: ModuleSpec, fn: FunctionSpec | None) -> FunctionState:
    if fn is None:  # a module without a constructor of its own
        return _new(info, FunctionState(name="", args=(), returns=_type_def(info, "JSON", spec.type_name, False)))
    sig = signature(fn.call)
    args = tuple(
        _new(
            info,
            FunctionArgState(
                name=name,
                type_def=_type_def(info, sig.parameters[python].annotation, spec.type_name, not required),
            ),
        )
        for name, (python, _type, required) in fn.args.items()
    )
    returns = _type_def(info, sig.return_annotation, spec.type_name, False)
    return _new(info, FunctionState(name=fn.graphql_name, args=args, returns=returns))


@resolves("Module", "objects")
def _objects(m: ModuleState, info: Info) -> list[TypeDefState]:
    spec = _core(info).modules[m.ref]
    main = TypeDefState(
        kind="OBJECT_KIND",
        name=spec.type_name,
        functions=tuple(_function(info, spec, fn) for fn in spec.functions.values()),
        constructor=_function(info, spec, spec.constructor),
    )
    return [_new(info, main)]


@resolves("TypeDef", "kind")
def _kind(t: TypeDefState, _: Info) -> str:
    return t.kind


@resolves("TypeDef", "optional")
def _optional(t: TypeDefState, _: Info) -> bool:
    return t.optional


@resolves("TypeDef", "name")
def _typedef_name(t: TypeDefState, _: Info) -> str:
    return t.name


def _as(kind: str) -> Any:
    def resolve(t: TypeDefState, _: Info) -> TypeDefState:
        if t.kind != kind:
            raise graphql.GraphQLError(f"type {t.name or t.kind} is not of kind {kind}")
        return t

    return resolve


for _field, _kind_name in (
    ("asObject", "OBJECT_KIND"),
    ("asList", "LIST_KIND"),
    ("asEnum", "ENUM_KIND"),
    ("asScalar", "SCALAR_KIND"),
    ("asInput", "INPUT_KIND"),
    ("asInterface", "INTERFACE_KIND"),
):
    resolves("TypeDef", _field)(_as(_kind_name))


@resolves("ObjectTypeDef", "name")
@resolves("EnumTypeDef", "name")
@resolves("ScalarTypeDef", "name")
def _name(t: TypeDefState, _: Info) -> str:
    return t.name


@resolves("ObjectTypeDef", "functions")
def _functions(t: TypeDefState, _: Info) -> list[FunctionState]:
    return list(t.functions)


@resolves("ObjectTypeDef", "constructor")
def _constructor(t: TypeDefState, _: Info) -> FunctionState | None:
    return t.constructor


@resolves("ListTypeDef", "elementTypeDef")
def _element(t: TypeDefState, _: Info) -> TypeDefState | None:
    return t.element


@resolves("EnumTypeDef", "members")
def _members(t: TypeDefState, info: Info) -> list[EnumValueState]:
    return [_new(info, EnumValueState(name=m)) for m in t.members]


@resolves("EnumValueTypeDef", "name")
@resolves("Function", "name")
@resolves("FunctionArg", "name")
def _plain_name(obj: Any, _: Info) -> str:
    return str(obj.name)


@resolves("Function", "args")
def _args(f: FunctionState, _: Info) -> list[FunctionArgState]:
    return list(f.args)


@resolves("Function", "returnType")
def _return_type(f: FunctionState, _: Info) -> TypeDefState:
    return f.returns


@resolves("FunctionArg", "typeDef")
def _arg_type(a: FunctionArgState, _: Info) -> TypeDefState:
    return a.type_def


# --- values crossing into and out of a test's module function ---------------------------------


def argument_value(info: Info, annotation: Any, value: Any) -> Any:
    """What the test's function gets for an argument the client sent (objects come as IDs)."""
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return annotation[value]
    if annotation == "Directory":
        return dict(_load(info, value, DirectoryState).files)
    if annotation == "File":
        return _load(info, value, FileState).contents
    if annotation == "Secret":
        return _core(info).secret_value(_load(info, value, SecretState))
    if annotation == "CacheVolume":
        return _load(info, value, CacheVolumeState).key
    if annotation in OBJECTS:
        return _load(info, value, Node)
    return value


def return_value(info: Info, annotation: Any, value: Any) -> Any:
    """The function's result as the engine answers it (objects become states)."""
    if isinstance(value, enum.Enum):
        return value.name
    if annotation == "Directory":
        return _new(info, DirectoryState(files=dict(value)))
    if annotation == "File":
        return _new(info, FileState(name="result", contents=str(value)))
    return value
