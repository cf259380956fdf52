"""A module's type definitions through the engine's ``TypeDef`` API: ``Module.objects`` and
``Module.enums`` (``TypeDef`` -> ``ObjectTypeDef``/``EnumTypeDef`` -> ``Function`` ->
``FunctionArg`` -> ``TypeDef`` ...), built from a registered module (``modules.py``), so a
client can learn a module's functions, their arguments and return types before calling them.

Every object is a ``Record``: a node whose fields are plain values (nested records are
registered like any object, so the SDK can load them by ID). Names are the GraphQL names.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from tests.dagger_engine.modules import Arg, FunctionSpec, ModuleSpec
from tests.dagger_engine.state import Node

TYPES = ("TypeDef", "ObjectTypeDef", "EnumTypeDef", "EnumValueTypeDef", "ListTypeDef", "ScalarTypeDef", "Function",
         "FunctionArg", "FieldTypeDef")  # fmt: skip
_KINDS = {"String": "STRING_KIND", "Int": "INTEGER_KIND", "Float": "FLOAT_KIND", "Boolean": "BOOLEAN_KIND"}


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class Record(Node):
    graphql_type: ClassVar[str] = "Record"
    values: Mapping[str, Any]


@functools.cache
def record_class(graphql_type: str) -> type[Record]:
    return type(f"{graphql_type}Record", (Record,), {"graphql_type": graphql_type, "__slots__": ()})


Make = Callable[[str, dict[str, Any]], Record]  # registers a record of a GraphQL type


class Builder:
    def __init__(self, spec: ModuleSpec, make: Make) -> None:
        self.spec = spec
        self.make = make
        self.enums = {line.split()[1] for line in spec.extra_sdl if line.startswith("enum ")}

    def type_def(self, graphql_type: str, *, object_type: str = "") -> Record:
        optional = not graphql_type.endswith("!")
        name = graphql_type.rstrip("!")
        values: dict[str, Any] = {"optional": optional, "name": name}
        if name.startswith("["):
            values["kind"] = "LIST_KIND"
            values["asList"] = self.make("ListTypeDef", {"elementTypeDef": self.type_def(name[1:-1])})
        elif name in _KINDS:
            values["kind"] = _KINDS[name]
        elif name in self.enums:
            values["kind"] = "ENUM_KIND"
            values["asEnum"] = self.enum(name)
        elif name == "ID" and object_type:
            values.update(kind="OBJECT_KIND", name=object_type)
            values["asObject"] = self.make("ObjectTypeDef", {"name": object_type, "functions": [], "fields": []})
        elif name == "JSON":
            values["kind"] = "SCALAR_KIND"
            values["asScalar"] = self.make("ScalarTypeDef", {"name": "JSON"})
        else:
            values["kind"] = "OBJECT_KIND"
            values["asObject"] = self.object(name)
        return self.make("TypeDef", values)

    def enum(self, name: str) -> Record:
        line = next(line for line in self.spec.extra_sdl if line.startswith(f"enum {name} "))
        members = [
            self.make("EnumValueTypeDef", {"name": member, "value": member})
            for member in line.split("{", 1)[1].rstrip("}").split()
        ]
        return self.make("EnumTypeDef", {"name": name, "members": members, "values": members})

    def object(self, name: str) -> Record:
        fields: list[Record] = []
        functions: list[Record] = []
        if name == self.spec.type_name:
            functions = [self.function(fn) for fn in self.spec.functions.values()]
        for line in next((sdl for sdl in self.spec.extra_sdl if sdl.startswith(f"type {name} ")), "").splitlines()[
            1:-1
        ]:
            field_name, field_type = (part.strip() for part in line.split(":", 1))
            fields.append(self.make("FieldTypeDef", {"name": field_name, "typeDef": self.type_def(field_type)}))
        values: dict[str, Any] = {"name": name, "functions": functions, "fields": fields}
        if name == self.spec.type_name and self.spec.constructor is not None:
            values["constructor"] = self.function(self.spec.constructor, returns=f"{name}!")
        return self.make("ObjectTypeDef", values)

    def function(self, fn: FunctionSpec, returns: str | None = None) -> Record:
        args = [self.argument(name, arg) for name, arg in fn.args.items()]
        return_type = (
            self.type_def(returns or fn.returns) if (returns or fn.returns) != f"{self.spec.type_name}!" else None
        )
        values: dict[str, Any] = {"name": "" if returns else fn.graphql_name, "args": args}
        values["returnType"] = return_type or self.make(
            "TypeDef", {"kind": "OBJECT_KIND", "name": self.spec.type_name, "optional": False}
        )
        return self.make("Function", values)

    def argument(self, name: str, arg: Arg) -> Record:
        default = None if arg.default is inspect.Parameter.empty else json.dumps(_plain(arg.default))
        type_def = self.type_def(arg.type, object_type=arg.object_type)
        return self.make("FunctionArg", {"name": name, "typeDef": type_def, "defaultValue": default or "null"})


def _plain(value: Any) -> Any:
    return value.name if hasattr(value, "name") and hasattr(value, "value") else value


def module_objects(spec: ModuleSpec, make: Make) -> list[Record]:
    """``Module.objects``: the module's main object, then its other object types."""
    builder = Builder(spec, make)
    names = [spec.type_name, *spec.object_fields]
    return [builder.type_def(f"{name}!") for name in names]


def module_enums(spec: ModuleSpec, make: Make) -> list[Record]:
    builder = Builder(spec, make)
    return [builder.type_def(f"{name}!") for name in sorted(builder.enums)]
