"""The engine's object model: immutable states, each known by an opaque ID and a content key.

Every API call that "changes" an object makes a new state pointing at its parent, like the
real engine's DAG. Each state also has a ``content_key``: a digest of how it was made (its parent's
key, the field and its arguments, with object arguments replaced by *their* content keys), except
where the real engine keys by content: a host directory or file by what it read, ``from`` by
the image digest the tag resolved to, a secret by its name and a hash of its value. Equal
keys mean the same operation, so the evaluator runs a key once for the whole engine
(``evaluation.py``).
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from tests.dagger_engine.images import Image


def new_id(kind: str) -> str:
    # Opaque to clients, like the real engine's (base64 protobuf) IDs.
    return f"{kind}:{secrets.token_hex(12)}"


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class Node:
    graphql_type: ClassVar[str] = "Node"
    id: str = dataclasses.field(init=False)
    content_key: str = dataclasses.field(default="", repr=False)  # set by the resolver that makes it

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", new_id(self.graphql_type))


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class SecretState(Node):
    graphql_type: ClassVar[str] = "Secret"
    name: str


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class CacheVolumeState(Node):
    graphql_type: ClassVar[str] = "CacheVolume"
    key: str


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class DirectoryState(Node):
    """A directory snapshot: relative path -> text. ``origin`` is the host path it came from."""

    graphql_type: ClassVar[str] = "Directory"
    files: Mapping[str, str]
    origin: str | None = None


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class FileState(Node):
    graphql_type: ClassVar[str] = "File"
    name: str
    contents: str
    origin: str | None = None


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class HostState(Node):
    graphql_type: ClassVar[str] = "Host"


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class ModuleSourceState(Node):
    graphql_type: ClassVar[str] = "ModuleSource"
    ref: str


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class ModuleState(Node):
    graphql_type: ClassVar[str] = "Module"
    ref: str
    name: str


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class ModuleObject:
    """The main object of a served module (``{ <module>(<constructor args>) { <function>(...) } }``);
    ``value`` is what the module's constructor returned (None without one)."""

    module: str
    value: Any = None
    key: str = ""  # digest of the module and its constructor arguments


@dataclasses.dataclass(frozen=True, slots=True)
class Mount:
    """Something mounted at a container path. ``source`` is the snapshot it starts from."""

    kind: str  # host | directory | cache | file | secret
    label: str  # host path, cache key or secret name ("" for a directory not from the host)
    source: DirectoryState | FileState | CacheVolumeState | SecretState
    read_only: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class ExecOp:
    args: tuple[str, ...]
    expect: str
    stdin: str
    redirect_stdin: str
    redirect_stdout: str
    redirect_stderr: str


@dataclasses.dataclass(frozen=True, slots=True)
class FromOp:
    """The root filesystem replaced by an image's."""

    image: Image


@dataclasses.dataclass(frozen=True, slots=True)
class WriteOp:
    """Files written into the container: container path -> text."""

    files: Mapping[str, str]


Op = ExecOp | WriteOp | FromOp | None


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class ContainerState(Node):
    graphql_type: ClassVar[str] = "Container"
    parent: ContainerState | None = None
    op: Op = None
    image: str | None = None
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    workdir: str = "/"
    user: str = ""
    entrypoint: tuple[str, ...] = ()
    default_args: tuple[str, ...] = ()
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    mounts: Mapping[str, Mount] = dataclasses.field(default_factory=dict)
    secret_env: Mapping[str, SecretState] = dataclasses.field(default_factory=dict)
    pulled: Image | None = None  # what ``from`` resolved to

    def derive(self, op: Op = None, **changes: Any) -> ContainerState:
        """A child state: same configuration with ``changes``, plus ``op`` applied on top."""
        return dataclasses.replace(self, parent=self, op=op, content_key="", **changes)

    def has_exec(self) -> bool:
        state: ContainerState | None = self
        while state is not None:
            if isinstance(state.op, ExecOp):
                return True
            state = state.parent
        return False


N = TypeVar("N", bound="Node")


class Registry:
    """ID -> state, for ``node(id:)`` and object arguments."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[str, Node] = {}

    def add(self, obj: N) -> N:
        with self._lock:
            self._objects[obj.id] = obj
        return obj

    def get(self, id_: str) -> Node | None:
        with self._lock:
            return self._objects.get(id_)
