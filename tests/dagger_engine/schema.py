"""The engine's GraphQL schema, derived mechanically from the installed dagger-io SDK.

The SDK's ``dagger/client/gen.py`` is generated from the engine's schema of its release, so it
is the engine's API: every class and method there maps back to a type and a field. Nothing is
hand-written: ``sdl()`` reads ``gen.py`` with ``ast`` (nothing is imported or executed) and
prints the SDL the engine serves. The rules, one per construct of the generated code:

- ``class X(Scalar)`` -> ``scalar X``; ``class X(Enum)`` -> ``enum X`` whose values are the
  member *names* (the SDK sends names; aliases such as ``GZIP = "Gzip"`` are values too);
  ``@dataclass class X(Input)`` -> ``input X`` (field annotations and defaults).
- ``class X(Type)`` -> ``type X``; ``class _XClient(Type)`` (with ``_graphql_name``) ->
  ``interface X``; ``class Query(Root)`` -> ``type Query``. A type implements every interface
  whose fields it all has (the SDK does not spell ``implements`` out).
- A method becomes a field when it selects one: ``self._select("fieldName", _args)`` or
  ``self._ctx.execute_sync(self, "fieldName", _args)`` (the latter answers an ``ID!``).
- Arguments come from ``Arg("graphqlName", python_param, default)``: the parameter's
  annotation gives the type (a required parameter is non-null, ``T | None`` is nullable), the
  third element of ``Arg`` the GraphQL default. An object parameter (``source: "Directory"``)
  is an ``ID!``, as on the real engine (``ID! @expectedType(name: "Directory")``).
- Return annotations give the field type: scalars and enums as written (``T | None`` is
  nullable, anything else non-null), ``list[T]`` as ``[T!]!``, ``Self`` as the class itself,
  an object as ``T!``. A ``str`` documented as "The `ID` scalar type" is an ``ID!``.

What the SDK cannot tell, and is therefore assumed: an object-valued field is non-null
(``Query.node`` is ``Node`` on a real engine). Output nullability never changes whether a
query validates; ``tests/test_dagger_engine.py`` checks the derivation against the published
v0.21.8 schema when that file is at hand.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import hashlib
import importlib.util
import json
import os
import tempfile
from pathlib import Path


def _sdk_gen_py() -> Path:
    # Located without importing the SDK (slow, and an engine process needs only this file).
    spec = importlib.util.find_spec("dagger")
    assert spec is not None and spec.submodule_search_locations, "dagger-io is not installed"
    return Path(next(iter(spec.submodule_search_locations))) / "client" / "gen.py"


GEN_PY = _sdk_gen_py()
_BUILTIN = {"str": "String", "int": "Int", "float": "Float", "bool": "Boolean"}


@dataclasses.dataclass(slots=True)
class _Field:
    name: str
    args: list[str]  # printed SDL argument definitions
    type: str


@dataclasses.dataclass(slots=True)
class _Derived:
    scalars: list[str] = dataclasses.field(default_factory=list)
    enums: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    inputs: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    objects: dict[str, dict[str, _Field]] = dataclasses.field(default_factory=dict)
    interfaces: dict[str, dict[str, _Field]] = dataclasses.field(default_factory=dict)


def _bases(cls: ast.ClassDef) -> set[str]:
    return {b.id for b in cls.bases if isinstance(b, ast.Name)}


def _graphql_name(cls: ast.ClassDef) -> str:
    """``_graphql_name`` when the class overrides it (interfaces), else the class name."""
    for item in cls.body:
        if isinstance(item, ast.FunctionDef) and item.name == "_graphql_name":
            for node in ast.walk(item):
                if isinstance(node, ast.Return) and isinstance(node.value, ast.Constant):
                    return str(node.value.value)
    return cls.name


class _Types:
    """Maps annotations to GraphQL type names, knowing which names are which kind."""

    def __init__(self, classes: dict[str, ast.ClassDef]) -> None:
        self.scalars = {n for n, c in classes.items() if "Scalar" in _bases(c)}
        self.enums = {n for n, c in classes.items() if "Enum" in _bases(c)}
        self.inputs = {n for n, c in classes.items() if "Input" in _bases(c)}
        self.objects = {n for n, c in classes.items() if _bases(c) & {"Type", "Root"} and not n.startswith("_")}
        self.objects |= {"Type", "Node", "Exportable", "Syncer"}  # protocols: objects given as IDs

    def _name(self, node: ast.expr, owner: str, *, argument: bool) -> str:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            node = ast.parse(node.value, mode="eval").body
        if isinstance(node, ast.Name):
            name = node.id
            if name == "Self":
                return "ID" if argument else owner
            if name in _BUILTIN:
                return _BUILTIN[name]
            if name in self.scalars or name in self.enums or name in self.inputs:
                return name
            if name in self.objects:
                return "ID" if argument else ("Query" if name == "Client" else name)
        raise ValueError(f"unmapped annotation {ast.unparse(node)!r} in {owner}")

    def type(self, node: ast.expr, owner: str, *, argument: bool) -> str:
        """``T!``, ``T`` for ``T | None``, ``[T!]`` for ``list[T]``."""
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            node = ast.parse(node.value, mode="eval").body
        nullable = False
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            if isinstance(node.right, ast.Constant) and node.right.value is None:
                node, nullable = node.left, True
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "list":
            inner = f"[{self.type(node.slice, owner, argument=argument)}]"
        else:
            inner = self._name(node, owner, argument=argument)
        return inner if nullable else inner + "!"


def _literal(node: ast.expr) -> str | None:
    """A Python default as a GraphQL literal; None for "no default"."""
    if isinstance(node, ast.Constant):
        if node.value is None:
            return None
        if isinstance(node.value, bool):
            return "true" if node.value else "false"
        return json.dumps(node.value)
    if isinstance(node, ast.List):
        return "[" + ", ".join(_literal(e) or "null" for e in node.elts) + "]"
    if isinstance(node, ast.Attribute):  # EnumClass.MEMBER -> MEMBER
        return node.attr
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
        return json.dumps(-node.operand.value)
    raise ValueError(f"unmapped default {ast.unparse(node)!r}")


def _selected_field(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[str, bool] | None:
    """(GraphQL field name, answers with an ID via execute_sync) of a generated method."""
    for node in ast.walk(fn):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            first = node.args[0]
            if node.func.attr == "_select" and isinstance(first, ast.Constant):
                return str(first.value), False
            if node.func.attr == "execute_sync" and len(node.args) >= 2:
                second = node.args[1]
                if isinstance(second, ast.Constant):
                    return str(second.value), True
    return None


def _param_of(expr: ast.expr) -> str | None:
    """The parameter an ``Arg`` value refers to (``x``, ``[] if x is None else x``)."""
    if isinstance(expr, ast.Name):
        return expr.id
    if isinstance(expr, ast.IfExp):
        return _param_of(expr.orelse)
    return None


def _field(fn: ast.FunctionDef | ast.AsyncFunctionDef, owner: str, types: _Types) -> _Field | None:
    selected = _selected_field(fn)
    if selected is None or fn.returns is None:
        return None
    name, answers_id = selected
    params = {a.arg: a.annotation for a in [*fn.args.args, *fn.args.kwonlyargs] if a.annotation is not None}
    args: list[str] = []
    for node in ast.walk(fn):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Arg":
            arg_name = node.args[0]
            assert isinstance(arg_name, ast.Constant)
            param = _param_of(node.args[1])
            if param is None or param not in params:
                raise ValueError(f"{owner}.{name}: cannot tell the parameter of {ast.unparse(node)}")
            arg_type = types.type(params[param], owner, argument=True)
            default = _literal(node.args[2]) if len(node.args) > 2 else None
            args.append(f"{arg_name.value}: {arg_type}" + (f" = {default}" if default is not None else ""))
    if answers_id:
        return _Field(name, args, "ID!")
    docstring = ast.get_docstring(fn) or ""
    if ast.unparse(fn.returns) == "str" and "The `ID` scalar type" in docstring:
        return _Field(name, args, "ID!")
    return _Field(name, args, types.type(fn.returns, owner, argument=False))


def _derive(source: str) -> _Derived:
    module = ast.parse(source)
    classes = {node.name: node for node in module.body if isinstance(node, ast.ClassDef)}
    types = _Types(classes)
    out = _Derived()
    for cls in classes.values():
        bases = _bases(cls)
        if "Scalar" in bases:
            out.scalars.append(cls.name)
        elif "Enum" in bases:
            out.enums[cls.name] = [
                t.id
                for item in cls.body
                if isinstance(item, ast.Assign)
                for t in item.targets
                if isinstance(t, ast.Name)
            ]
        elif "Input" in bases:
            fields = []
            for item in cls.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    default = _literal(item.value) if item.value is not None else None
                    field_type = types.type(item.annotation, cls.name, argument=True)
                    fields.append(f"{item.target.id}: {field_type}" + (f" = {default}" if default else ""))
            out.inputs[cls.name] = fields
        elif bases & {"Type", "Root"} and cls.name != "Client":
            name = _graphql_name(cls)
            fields = {}
            for item in cls.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and not item.name.startswith("_"):
                    field = _field(item, name, types)
                    if field is not None:
                        fields[field.name] = field
            target = out.interfaces if cls.name.startswith("_") else out.objects
            target[name] = fields
    return out


def _print_field(field: _Field) -> str:
    args = f"({', '.join(field.args)})" if field.args else ""
    return f"  {field.name}{args}: {field.type}"


def _implements(fields: dict[str, _Field], interfaces: dict[str, dict[str, _Field]], own: str = "") -> list[str]:
    return sorted(
        name
        for name, iface in interfaces.items()
        if name != own and iface and all(f in fields and fields[f].type == iface[f].type for f in iface)
    )


def render(source: str) -> str:
    """The SDL of the API in ``source`` (the text of a generated ``gen.py``)."""
    derived = _derive(source)
    parts: list[str] = [f"scalar {name}" for name in sorted(derived.scalars)]
    for name, values in sorted(derived.enums.items()):
        parts.append(f"enum {name} {{\n" + "".join(f"  {v}\n" for v in values) + "}")
    for name, fields in sorted(derived.inputs.items()):
        parts.append(f"input {name} {{\n" + "".join(f"  {f}\n" for f in fields) + "}")
    for kind, table in (("interface", derived.interfaces), ("type", derived.objects)):
        for name, fields in sorted(table.items()):
            implements = _implements(fields, derived.interfaces, name)
            head = f"{kind} {name}" + (f" implements {' & '.join(implements)}" if implements else "")
            body = "".join(_print_field(f) + "\n" for _, f in sorted(fields.items()))
            parts.append(f"{head} {{\n{body}}}")
    return "\n\n".join(parts) + "\n"


@functools.cache
def sdl() -> str:
    """The installed SDK's API as SDL: rendered once per process, and kept in a file named by
    the hash of ``gen.py`` and of this module (so a change to either renders again)."""
    source = GEN_PY.read_text(encoding="utf-8")
    inputs = hashlib.sha256(source.encode() + Path(__file__).read_bytes()).hexdigest()[:24]
    path = Path(tempfile.gettempdir()) / f"dagger-test-engine-sdl-{inputs}.graphqls"
    with contextlib.suppress(OSError):
        return path.read_text(encoding="utf-8")
    text = render(source)
    with contextlib.suppress(OSError):
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(text, encoding="utf-8")
        partial.replace(path)
    return text


SDL = sdl()
