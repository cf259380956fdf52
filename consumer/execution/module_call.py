"""Calling a Dagger module function given as data, through the module's own type definitions.

Nothing of a command becomes query text. The module is loaded and its type definitions are read
from the engine with the SDK's typed API (``Module.objects``: the main object's functions, their
arguments and return types, the constructor). The requested function and argument names are
matched against them (``greet_person`` finds ``greetPerson``); an unknown name is refused by
name. The query is then written from the engine's names only (checked to be GraphQL names), and
every value travels as a GraphQL variable typed from the definitions:

- ``String``/``Int``/``Float``/``Boolean``, lists of them, and ``JSON`` (any JSON value);
- enums: one of the enum's member names;
- objects, given as plain values like the pipeline's: ``Directory``/``File`` a host path (path
  rules), ``Secret`` the name of one of the command's secrets, ``CacheVolume`` a cache volume
  name, ``Container`` an image address. Other object types are refused by name.

What comes back: scalars, enums and lists of them as they are; a ``Container`` as its last
command's ``exit_code``/``stdout``/``stderr`` (``ran: false`` when it ran none); a ``Directory``
as its ``entries``; a ``File`` as its ``name``, ``size`` and ``contents`` (up to 1 MiB). Any
other return type (a service, the module's own objects, lists of objects) is refused by name
before the function is called.

Module refs must match ``allowed_modules`` (shell-style patterns over the whole ref); local refs
(paths) must also lie under the path rules' roots.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagger

from consumer.errors import permanent, tail
from consumer.execution.context import RunContext
from consumer.paths import PathRules

GRAPHQL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PINNED_GIT_REF = re.compile(r"@[0-9a-f]{40}$")
MAX_FILE_BYTES = 1 << 20

K = dagger.TypeDefKind
_BUILTIN = {
    K.STRING_KIND: "String",
    K.INTEGER_KIND: "Int",
    K.FLOAT_KIND: "Float",
    K.BOOLEAN_KIND: "Boolean",
    K.VOID_KIND: "Void",
}
# Object arguments the worker can build from a plain value, and what that value is.
OBJECT_ARGUMENTS = {
    "Directory": "a host directory path",
    "File": "a host file path",
    "Secret": "the name of one of the command's secrets",
    "CacheVolume": "a cache volume name",
    "Container": "an image address",
}
OBJECT_RETURNS = ("Container", "Directory", "File")


# --- refs ----------------------------------------------------------------------------------


def is_local_ref(ref: str) -> bool:
    """Dagger reads a ref as a local path unless it looks like a git URL (a host name first)."""
    if ref.startswith(("/", ".", "~")):
        return True
    if "://" in ref or ref.startswith("git@"):
        return False
    first = ref.split("/", 1)[0].split("@", 1)[0]
    return "." not in first and ":" not in first


def check_module_ref(ref: str, allowed: Sequence[str], rules: PathRules) -> tuple[str, Path | None]:
    """The ref to load (a local one resolved to its directory) and that directory, or a
    permanent failure naming why the ref is refused."""
    if not allowed:
        raise permanent("module calls are disabled on this worker (allowed_modules is empty)")
    if any(c.isspace() or not c.isprintable() for c in ref):
        raise permanent("module ref must not contain whitespace or control characters")
    if ".." in re.split(r"[/\\@:]", ref):
        raise permanent(f"module ref {ref!r} must not contain '..'")
    if not any(fnmatch.fnmatchcase(ref, pattern) for pattern in allowed):
        raise permanent(f"module {ref!r} is not in this worker's allowed_modules")
    if is_local_ref(ref):
        directory = rules.host_directory(ref, what="module")
        return str(directory), directory
    return ref, None


def is_pinned(ref: str, local_directory: Path | None) -> bool:
    """A ref whose content cannot change under the same text: a git ref at a full commit, or a
    local directory (its content goes into the cache key)."""
    return local_directory is not None or PINNED_GIT_REF.search(ref) is not None


# --- type definitions ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TypeRef:
    kind: dagger.TypeDefKind
    name: str  # object, enum, scalar, input or interface name; "" for built-ins and lists
    optional: bool
    element: TypeRef | None = None
    members: tuple[str, ...] = ()

    def variable_type(self) -> str:
        """The GraphQL type of a variable carrying this value (objects travel as IDs)."""
        if self.kind is K.LIST_KIND:
            assert self.element is not None
            base = f"[{self.element.variable_type()}]"
        elif self.kind is K.OBJECT_KIND:
            base = "ID"
        else:
            base = _BUILTIN.get(self.kind) or _checked_name(self.name, "type")
        return base if self.optional else base + "!"

    def describe(self) -> str:
        if self.kind is K.LIST_KIND:
            assert self.element is not None
            return f"[{self.element.describe()}]"
        return _BUILTIN.get(self.kind) or self.name or self.kind.value


@dataclass(frozen=True, slots=True)
class FunctionDef:
    name: str
    args: dict[str, TypeRef]
    returns: TypeRef


@dataclass(slots=True)
class ModuleBinding:
    ref: str
    name: str
    field: str  # the Query field the served module adds (its constructor)
    constructor: FunctionDef
    functions: dict[str, FunctionDef]
    digest: str = ""

    def function(self, requested: str) -> FunctionDef:
        found = _match(requested, self.functions)
        if found is None:
            known = ", ".join(sorted(self.functions)) or "none"
            raise permanent(f"module {self.name!r} has no function {requested!r} (functions: {known})")
        return self.functions[found]


def _match(requested: str, names: dict[str, Any]) -> str | None:
    if requested in names:
        return requested
    camel = _camel(requested)
    return camel if camel in names else None


def _camel(name: str) -> str:
    parts = [p for p in re.split(r"[-_]", name) if p]
    if not parts:
        return name
    return parts[0][:1].lower() + parts[0][1:] + "".join(p[:1].upper() + p[1:] for p in parts[1:])


def _normalized(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _checked_name(name: str, what: str) -> str:
    if not GRAPHQL_NAME.match(name):
        raise permanent(f"the engine reported a {what} name that is not a GraphQL name: {name[:60]!r}")
    return name


async def _type_ref(td: dagger.TypeDef) -> TypeRef:
    kind, optional = await asyncio.gather(td.kind(), td.optional())
    if kind is K.LIST_KIND:
        return TypeRef(kind, "", optional, element=await _type_ref(td.as_list().element_type_def()))
    if kind is K.OBJECT_KIND:
        return TypeRef(kind, await td.as_object().name(), optional)
    if kind is K.ENUM_KIND:
        enum = td.as_enum()
        name, members = await asyncio.gather(enum.name(), enum.members())
        values = await asyncio.gather(*(m.name() for m in members))
        return TypeRef(kind, name, optional, members=tuple(values))
    if kind is K.SCALAR_KIND:
        return TypeRef(kind, await td.as_scalar().name(), optional)
    if kind is K.INPUT_KIND:
        return TypeRef(kind, await td.as_input().name(), optional)
    if kind is K.INTERFACE_KIND:
        return TypeRef(kind, await td.as_interface().name(), optional)
    return TypeRef(kind, "", optional)


async def _function_def(fn: dagger.Function, *, constructor: bool = False) -> FunctionDef:
    if constructor:  # nameless; it returns the module's main object
        name, args, returns = "", await fn.args(), TypeRef(K.OBJECT_KIND, "", False)
    else:
        name, args, returns = await asyncio.gather(fn.name(), fn.args(), _type_ref(fn.return_type()))
    arg_names = await asyncio.gather(*(a.name() for a in args))
    arg_types = await asyncio.gather(*(_type_ref(a.type_def()) for a in args))
    return FunctionDef(
        name="" if constructor else _checked_name(name, "function"),
        args={_checked_name(n, "argument"): t for n, t in zip(arg_names, arg_types, strict=True)},
        returns=returns,
    )


async def load_binding(client: dagger.Client, ref: str) -> tuple[ModuleBinding, dagger.Module]:
    """Load the module at ``ref`` and read its main object's type definitions."""
    module = client.module_source(ref).as_module()
    name = await module.name()
    main_name = _normalized(name)
    main: dagger.ObjectTypeDef | None = None
    for typedef in await module.objects():
        obj = typedef.as_object()
        if _normalized(await obj.name()) == main_name:
            main = obj
            break
    if main is None:
        raise permanent(f"module {name!r} ({ref}) has no main object to call functions on")
    functions = await asyncio.gather(*(_function_def(fn) for fn in await main.functions()))
    try:  # a constructor's name is empty; a module without one has a null constructor
        constructor = await _function_def(main.constructor(), constructor=True)
    except (dagger.QueryError, TypeError, KeyError, AttributeError):
        constructor = FunctionDef(name="", args={}, returns=TypeRef(K.OBJECT_KIND, name, False))
    binding = ModuleBinding(
        ref=ref,
        name=name,
        field=_checked_name(_camel(name), "module"),
        constructor=constructor,
        functions={f.name: f for f in functions},
    )
    return binding, module


async def served_binding(ctx: RunContext, ref: str) -> ModuleBinding:
    """The module's binding in this session, loading and serving it on first use. A session
    serves one version of a module (a real engine refuses a second one)."""
    session = ctx.session
    async with session.modules_lock:
        binding: ModuleBinding | None = session.modules.get(ref)
        if binding is not None:
            return binding
        binding, module = await load_binding(ctx.client, ref)
        for other in session.modules.values():
            if other.field == binding.field:
                raise permanent(
                    f"module {binding.name!r} is already loaded in this engine session from {other.ref!r}; "
                    f"a second version ({ref!r}) needs an engine session of its own, which this worker "
                    "cannot open while bound to one given session (DAGGER_SESSION_PORT)"
                )
        await module.serve()
        session.modules[ref] = binding
        return binding


# --- arguments -----------------------------------------------------------------------------


@dataclass(slots=True)
class BoundCall:
    variables: dict[str, Any] = field(default_factory=dict)
    definitions: list[str] = field(default_factory=list)
    host_inputs: list[Path] = field(default_factory=list)

    def add(self, prefix: str, type_: TypeRef, value: Any) -> str:
        name = f"{prefix}{len(self.definitions)}"
        self.definitions.append(f"${name}: {type_.variable_type()}")
        self.variables[name] = value
        return name


async def bind_arguments(
    ctx: RunContext, fn: FunctionDef, given: dict[str, Any], call: BoundCall, *, what: str, prefix: str
) -> str:
    """``(name: $var, ...)`` for the call, every value added to ``call`` as a typed variable."""
    matched: dict[str, Any] = {}
    for key, value in given.items():
        name = _match(key, fn.args)
        if name is None:
            known = ", ".join(sorted(fn.args)) or "none"
            raise permanent(f"{what} has no argument {key!r} (arguments: {known})")
        matched[name] = value
    missing = [n for n, t in fn.args.items() if not t.optional and n not in matched]
    if missing:
        raise permanent(f"{what} needs argument(s) {', '.join(missing)}")
    parts = []
    for name, value in matched.items():
        type_ = fn.args[name]
        if value is None:
            if not type_.optional:
                raise permanent(f"{what} argument {name!r} must not be null")
            continue
        converted = await _value(ctx, type_, value, f"{what} argument {name!r}", call)
        parts.append(f"{name}: ${call.add(prefix, type_, converted)}")
    return f"({', '.join(parts)})" if parts else ""


async def _value(ctx: RunContext, type_: TypeRef, value: Any, where: str, call: BoundCall) -> Any:
    kind = type_.kind
    if kind is K.LIST_KIND:
        assert type_.element is not None
        if not isinstance(value, list):
            raise permanent(f"{where} must be a list ({type_.describe()})")
        return [await _value(ctx, type_.element, v, f"{where}[{i}]", call) for i, v in enumerate(value)]
    if kind is K.STRING_KIND and isinstance(value, str):
        return value
    if kind is K.INTEGER_KIND and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is K.FLOAT_KIND and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is K.BOOLEAN_KIND and isinstance(value, bool):
        return value
    if kind is K.ENUM_KIND:
        if isinstance(value, str) and value in type_.members:
            return value
        raise permanent(f"{where} must be one of {', '.join(type_.members)}")
    if kind is K.SCALAR_KIND and type_.name == "JSON":
        return json.dumps(value)
    if kind is K.SCALAR_KIND and isinstance(value, str):
        return value
    if kind is K.OBJECT_KIND and type_.name in OBJECT_ARGUMENTS:
        if not isinstance(value, str) or not value:
            raise permanent(f"{where} must be {OBJECT_ARGUMENTS[type_.name]}")
        return await _object_id(ctx, type_.name, value, where, call)
    if kind in (K.OBJECT_KIND, K.INPUT_KIND, K.INTERFACE_KIND):
        allowed = ", ".join(OBJECT_ARGUMENTS)
        raise permanent(f"{where} is of type {type_.describe()}, which a command cannot give (supported: {allowed})")
    raise permanent(f"{where} must be a {type_.describe()}")


async def _object_id(ctx: RunContext, kind: str, value: str, where: str, call: BoundCall) -> str:
    if kind == "Directory":
        path = ctx.rules.host_directory(value, what=where)
        call.host_inputs.append(path)
        return str(await ctx.host_directory(str(path)).id())
    if kind == "File":
        path = ctx.rules.host_file(value, what=where)
        call.host_inputs.append(path)
        return str(await ctx.host_file(str(path)).id())
    if kind == "Secret":
        if value not in ctx.secrets:
            known = ", ".join(sorted(ctx.secrets)) or "none"
            raise permanent(f"{where}: unknown secret {value!r} (secrets given: {known})")
        return str(await ctx.secret(value).id())
    if kind == "CacheVolume":
        return str(await ctx.client.cache_volume(value).id())
    return str(await ctx.container(value).id())


# --- the call ------------------------------------------------------------------------------


def _selection(fn: FunctionDef, binding: ModuleBinding) -> str:
    returns = fn.returns
    element = returns
    while element.kind is K.LIST_KIND and element.element is not None:
        element = element.element
    if element.kind not in (K.OBJECT_KIND, K.INTERFACE_KIND):
        return ""
    if returns.kind is K.OBJECT_KIND and returns.name in OBJECT_RETURNS:
        return " { id }"
    raise permanent(
        f"function {fn.name!r} of module {binding.name!r} returns {returns.describe()}, which cannot be "
        f"carried in a result (supported: scalars, enums, lists of them, {', '.join(OBJECT_RETURNS)})"
    )


@dataclass(slots=True)
class PreparedCall:
    binding: ModuleBinding
    function: FunctionDef
    query: str
    variables: dict[str, Any]
    host_inputs: list[Path]


async def prepare_call(
    ctx: RunContext, ref: str, function: str, args: dict[str, Any], constructor_args: dict[str, Any]
) -> PreparedCall:
    """Everything checked against the module's definitions, the query written; nothing run."""
    binding = await served_binding(ctx, ref)
    fn = binding.function(function)
    selection = _selection(fn, binding)
    call = BoundCall()
    ctor = await bind_arguments(
        ctx, binding.constructor, constructor_args, call, what=f"module {binding.name!r} constructor", prefix="c"
    )
    arguments = await bind_arguments(ctx, fn, args, call, what=f"function {fn.name!r}", prefix="a")
    variables = f"({', '.join(call.definitions)})" if call.definitions else ""
    query = f"query Call{variables} {{ {binding.field}{ctor} {{ {fn.name}{arguments}{selection} }} }}"
    return PreparedCall(binding, fn, query, call.variables, call.host_inputs)


async def run_call(ctx: RunContext, prepared: PreparedCall) -> Any:
    data = await ctx.session.execute(prepared.query, prepared.variables)
    value = data[prepared.binding.field][prepared.function.name]
    returns = prepared.function.returns
    if returns.kind is not K.OBJECT_KIND or value is None:
        return value
    return await _object_value(ctx, returns.name, str(value["id"]))


async def _object_value(ctx: RunContext, kind: str, id_: str) -> dict[str, Any]:
    client = ctx.client
    if kind == "Directory":
        entries = await client.load_directory_from_id(dagger.DirectoryID(id_)).entries()
        return {"type": "Directory", "entries": entries}
    if kind == "File":
        file = client.load_file_from_id(dagger.FileID(id_))
        name, size = await asyncio.gather(file.name(), file.size())
        out: dict[str, Any] = {"type": "File", "name": name, "size": size}
        if size <= MAX_FILE_BYTES:
            out["contents"] = await file.contents()
        return out
    ctr = client.load_container_from_id(dagger.ContainerID(id_))
    try:
        exit_code, stdout, stderr = await asyncio.gather(ctr.exit_code(), ctr.stdout(), ctr.stderr())
    except dagger.ExecError:
        raise
    except dagger.QueryError:  # no command ran in it: nothing to report but that it exists
        return {"type": "Container", "ran": False}
    return {"type": "Container", "ran": True, "exit_code": exit_code, "stdout": tail(stdout), "stderr": tail(stderr)}
