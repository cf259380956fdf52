"""Field resolvers: the meaning of the fields the product uses, over ``state.py``.

Every field of the SDK-derived schema (``schema.py``) validates; the ones without a resolver
here answer "not modelled by the test engine" when executed. Each resolver runs with the
call's content key at hand (``_CALL``), from which the objects it makes get their ``key``.
"""

from __future__ import annotations

import contextvars
import fnmatch
import functools
import hashlib
import json
import os
import posixpath
from collections.abc import Callable
from typing import Any, TypeVar

import graphql

from tests.dagger_engine import snapshots, typedefs
from tests.dagger_engine.commands import CommandNotFound
from tests.dagger_engine.core import EngineCore, Request
from tests.dagger_engine.evaluation import Evaluated, ExecFailed
from tests.dagger_engine.filesystem import ReadOnlyFileSystem, normalize, relative_to
from tests.dagger_engine.images import RegistryError, auth_host
from tests.dagger_engine.modules import FunctionSpec, ModuleSpec, module_sdl
from tests.dagger_engine.schema import SDL
from tests.dagger_engine.sessions import Session
from tests.dagger_engine.state import (
    CacheVolumeState,
    ContainerState,
    DirectoryState,
    ExecOp,
    FileState,
    FromOp,
    HostState,
    ModuleObject,
    ModuleSourceState,
    ModuleState,
    Mount,
    Node,
    SecretState,
    WriteOp,
)

Resolver = Callable[..., Any]
Info = graphql.GraphQLResolveInfo[Request]  # ``info.context``: the engine and the session
N = TypeVar("N", bound=Node)

RESOLVERS: dict[tuple[str, str], Resolver] = {}


def resolves(type_name: str, *fields: str) -> Callable[[Resolver], Resolver]:
    def register(fn: Resolver) -> Resolver:
        for name in fields:
            RESOLVERS[(type_name, name)] = fn
        return fn

    return register


def _core(info: Info) -> EngineCore:
    return info.context.core


def _session(info: Info) -> Session:
    return info.context.session


# The content key of the call being resolved: digest(receiver key, field, arguments).
_CALL: contextvars.ContextVar[str] = contextvars.ContextVar("call_key", default="")


def digest(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _new(info: Info, obj: N, key: str | None = None) -> N:
    """Register ``obj``; its key is ``key`` (content-addressed callers) or the call's."""
    object.__setattr__(obj, "content_key", key or _CALL.get() or digest("object", obj.id))
    return _core(info).registry.add(obj)


def _load(info: Info, id_: str, cls: type[N]) -> N:
    obj = _core(info).registry.get(id_)
    if not isinstance(obj, cls):
        raise graphql.GraphQLError(f"failed to load {cls.graphql_type} from ID {id_[:40]!r}")
    return obj


def _evaluate(info: Info, ctr: ContainerState) -> Evaluated:
    try:
        return _core(info).evaluator.evaluate(ctr)
    except CommandNotFound as missing:
        cmd = " ".join(ctr.op.args) if isinstance(ctr.op, ExecOp) else ""
        raise graphql.GraphQLError(
            f'process "{cmd}" did not complete successfully: failed to start: {missing}'
        ) from None
    except ReadOnlyFileSystem as refused:
        raise graphql.GraphQLError(f"write {refused.path}: read-only file system") from None
    except ExecFailed as failed:
        raise graphql.GraphQLError(
            str(failed),
            extensions={
                "_type": "EXEC_ERROR",
                "cmd": failed.cmd,
                "exitCode": failed.result.exit_code,
                "stdout": failed.result.stdout,
                "stderr": failed.result.stderr,
            },
        ) from None


def _host_path(path: str) -> str:
    # The real engine resolves host paths against the client's working directory.
    return os.path.abspath(os.path.expanduser(path))


# --- Query -----------------------------------------------------------------------------------


@resolves("Query", "container")
def _container(_: None, info: Info, **__: Any) -> ContainerState:
    return _new(info, ContainerState())


@resolves("Query", "host")
def _host(_: None, info: Info) -> HostState:
    return _new(info, HostState())


@resolves("Query", "version")
def _version(_: None, info: Info) -> str:
    return _core(info).version


@resolves("Query", "setSecret")
def _set_secret(_: None, info: Info, name: str, plaintext: str) -> SecretState:
    # Keyed by name and a hash of the value: a new value is a new input.
    secret = SecretState(name=name)
    object.__setattr__(secret, "content_key", digest("secret", name, hashlib.sha256(plaintext.encode()).hexdigest()))
    return _core(info).add_secret(secret, plaintext)


@resolves("Query", "secret")
def _secret(_: None, info: Info, uri: str, **__: Any) -> SecretState:
    scheme, _sep, rest = uri.partition("://")
    if scheme == "env" and rest in os.environ:
        value = os.environ[rest]
    elif scheme == "file" and os.path.isfile(rest):
        value = snapshots.read_text(rest)
    else:
        raise graphql.GraphQLError(f"failed to resolve secret {uri.split('?')[0]!r}")
    secret = SecretState(name=uri)
    object.__setattr__(secret, "content_key", digest("secret", uri, hashlib.sha256(value.encode()).hexdigest()))
    return _core(info).add_secret(secret, value)


@resolves("Query", "cacheVolume")
def _cache_volume(_: None, info: Info, key: str, **__: Any) -> CacheVolumeState:
    return _new(info, CacheVolumeState(key=key))


@resolves("Query", "node")
def _node(_: None, info: Info, id: str) -> Node:
    return _load(info, id, Node)


def _load_from_id(_: None, info: Info, id: str) -> Node:
    """``loadXFromID(id:)``: like node(id:), for an object of type X only."""
    obj = _load(info, id, Node)
    wanted = info.field_name.removeprefix("load").removesuffix("FromID")
    if obj.graphql_type != wanted:
        raise graphql.GraphQLError(f"load: expected ID of type {wanted!r}, got {obj.graphql_type!r}")
    return obj


@resolves("Query", "directory")
def _empty_directory(_: None, info: Info) -> DirectoryState:
    return _new(info, DirectoryState(files={}))


@resolves("Query", "file")
def _new_file(_: None, info: Info, name: str, contents: str, **__: Any) -> FileState:
    return _new(info, FileState(name=name, contents=contents))


@resolves("Query", "moduleSource")
def _module_source(_: None, info: Info, refString: str, **__: Any) -> ModuleSourceState:
    if refString not in _core(info).modules:
        raise graphql.GraphQLError(f"failed to resolve module source {refString!r}: not found")
    return _new(info, ModuleSourceState(ref=refString))


# --- Container: configuration ----------------------------------------------------------------


def _derive(info: Info, ctr: ContainerState, op: Any = None, **changes: Any) -> ContainerState:
    return _new(info, ctr.derive(op, **changes))


def _maybe_expand(ctr: ContainerState, text: str, expand: bool) -> str:
    from tests.dagger_engine.commands import expand as expand_vars

    return expand_vars(text, dict(ctr.env)) if expand else text


@resolves("Container", "from")
def _from(ctr: ContainerState, info: Info, address: str, **__: Any) -> ContainerState:
    # Resolved now, with the session's credentials, like the real engine's image resolver;
    # keyed by the digest the reference resolved to, so a moved tag is a new input.
    try:
        image = _core(info).registries.resolve(address, _session(info).auths())
    except RegistryError as failed:
        raise graphql.GraphQLError(str(failed)) from None
    state = ctr.derive(
        FromOp(image),
        image=address,
        pulled=image,
        env={**ctr.env, **image.env},
        workdir=image.workdir,
    )
    return _new(info, state, key=digest(ctr.content_key, "from", image.digest))


@resolves("Container", "imageRef")
def _image_ref(ctr: ContainerState, _: Info) -> str:
    state: ContainerState | None = ctr
    while state is not None and not isinstance(state.op, FromOp):
        if isinstance(state.op, ExecOp | WriteOp):
            break
        state = state.parent
    if state is None or not isinstance(state.op, FromOp):
        raise graphql.GraphQLError(
            "Image reference can only be retrieved immediately after the 'Container.From' call. "
            "Error in fetching imageRef as the container image is changed"
        )
    return state.op.image.image_ref


@resolves("Container", "withExec")
def _with_exec(ctr: ContainerState, info: Info, args: list[str], **kw: Any) -> ContainerState:
    args = [_maybe_expand(ctr, a, kw["expand"]) for a in args]
    if kw["useEntrypoint"]:
        args = [*ctr.entrypoint, *(args or ctr.default_args)]
    op = ExecOp(
        args=tuple(args),
        expect=kw["expect"],
        stdin=kw["stdin"],
        redirect_stdin=kw["redirectStdin"],
        redirect_stdout=kw["redirectStdout"],
        redirect_stderr=kw["redirectStderr"],
    )
    return _derive(info, ctr, op)


@resolves("Container", "withEnvVariable")
def _with_env(ctr: ContainerState, info: Info, name: str, value: str, expand: bool) -> ContainerState:
    return _derive(info, ctr, env={**ctr.env, name: _maybe_expand(ctr, value, expand)})


@resolves("Container", "withoutEnvVariable")
def _without_env(ctr: ContainerState, info: Info, name: str) -> ContainerState:
    return _derive(info, ctr, env={k: v for k, v in ctr.env.items() if k != name})


@resolves("Container", "withWorkdir")
def _with_workdir(ctr: ContainerState, info: Info, path: str, expand: bool) -> ContainerState:
    return _derive(info, ctr, workdir=normalize(_maybe_expand(ctr, path, expand), ctr.workdir))


@resolves("Container", "withUser")
def _with_user(ctr: ContainerState, info: Info, name: str) -> ContainerState:
    return _derive(info, ctr, user=name)


@resolves("Container", "withEntrypoint")
def _with_entrypoint(ctr: ContainerState, info: Info, args: list[str], keepDefaultArgs: bool) -> ContainerState:
    return _derive(info, ctr, entrypoint=tuple(args), default_args=ctr.default_args if keepDefaultArgs else ())


@resolves("Container", "withoutEntrypoint")
def _without_entrypoint(ctr: ContainerState, info: Info, keepDefaultArgs: bool) -> ContainerState:
    return _derive(info, ctr, entrypoint=(), default_args=ctr.default_args if keepDefaultArgs else ())


@resolves("Container", "withDefaultArgs")
def _with_default_args(ctr: ContainerState, info: Info, args: list[str]) -> ContainerState:
    return _derive(info, ctr, default_args=tuple(args))


@resolves("Container", "withLabel")
def _with_label(ctr: ContainerState, info: Info, name: str, value: str) -> ContainerState:
    return _derive(info, ctr, labels={**ctr.labels, name: value})


@resolves("Container", "withSecretVariable")
def _with_secret_variable(ctr: ContainerState, info: Info, name: str, secret: str) -> ContainerState:
    return _derive(info, ctr, secret_env={**ctr.secret_env, name: _load(info, secret, SecretState)})


@resolves("Container", "withRegistryAuth")
def _with_registry_auth(ctr: ContainerState, info: Info, address: str, username: str, secret: str) -> ContainerState:
    # The real engine adds the credential to the *session* (every later pull in it may use
    # it) and returns the container as it was.
    token = _load(info, secret, SecretState)
    _session(info).add_auth(auth_host(address), username, _core(info).secret_value(token), token.name)
    return ctr


def _mount(info: Info, ctr: ContainerState, path: str, mount: Mount) -> ContainerState:
    return _derive(info, ctr, mounts={**ctr.mounts, normalize(path, ctr.workdir): mount})


@resolves("Container", "withMountedDirectory")
def _with_mounted_directory(ctr: ContainerState, info: Info, path: str, source: str, **kw: Any) -> ContainerState:
    src = _load(info, source, DirectoryState)
    kind = "host" if src.origin else "directory"
    mount = Mount(kind, src.origin or "", src, read_only=bool(kw["readOnly"]))
    return _mount(info, ctr, _maybe_expand(ctr, path, kw["expand"]), mount)


@resolves("Container", "withMountedCache")
def _with_mounted_cache(ctr: ContainerState, info: Info, path: str, cache: str, **kw: Any) -> ContainerState:
    volume = _load(info, cache, CacheVolumeState)
    return _mount(info, ctr, _maybe_expand(ctr, path, kw["expand"]), Mount("cache", volume.key, volume))


@resolves("Container", "withMountedFile")
def _with_mounted_file(ctr: ContainerState, info: Info, path: str, source: str, **kw: Any) -> ContainerState:
    src = _load(info, source, FileState)
    return _mount(info, ctr, _maybe_expand(ctr, path, kw["expand"]), Mount("file", src.origin or "", src))


@resolves("Container", "withMountedSecret")
def _with_mounted_secret(ctr: ContainerState, info: Info, path: str, source: str, **kw: Any) -> ContainerState:
    secret = _load(info, source, SecretState)
    return _mount(info, ctr, _maybe_expand(ctr, path, kw["expand"]), Mount("secret", secret.name, secret))


# --- Container: files ------------------------------------------------------------------------


def _write(info: Info, ctr: ContainerState, files: dict[str, str]) -> ContainerState:
    return _derive(info, ctr, WriteOp({normalize(p, ctr.workdir): t for p, t in files.items()}))


@resolves("Container", "withNewFile")
def _with_new_file(ctr: ContainerState, info: Info, path: str, contents: str, **kw: Any) -> ContainerState:
    return _write(info, ctr, {_maybe_expand(ctr, path, kw["expand"]): contents})


@resolves("Container", "withFile")
def _with_file(ctr: ContainerState, info: Info, path: str, source: str, **kw: Any) -> ContainerState:
    src = _load(info, source, FileState)
    return _write(info, ctr, {_maybe_expand(ctr, path, kw["expand"]): src.contents})


@resolves("Container", "withDirectory")
def _with_directory(ctr: ContainerState, info: Info, path: str, source: str, **kw: Any) -> ContainerState:
    src = _load(info, source, DirectoryState)
    target = _maybe_expand(ctr, path, kw["expand"])
    files = snapshots.select(src.files, kw["include"], kw["exclude"])
    return _write(info, ctr, {posixpath.join(target, rel): text for rel, text in files.items()})


def _origin_of(ctr: ContainerState, path: str) -> str | None:
    """The host path behind a container path, when it lies in a mounted host directory."""
    for mount_path, mount in sorted(ctr.mounts.items(), key=lambda item: -len(item[0])):
        rel = relative_to(path, mount_path)
        if rel is not None:
            return os.path.join(mount.label, rel) if mount.kind == "host" else None
    return None


@resolves("Container", "directory")
def _ctr_directory(ctr: ContainerState, info: Info, path: str, expand: bool) -> DirectoryState:
    _evaluate(info, ctr)
    fs = _core(info).evaluator.view(ctr)
    full = normalize(_maybe_expand(ctr, path, expand), ctr.workdir)
    if not fs.is_dir(full):
        raise graphql.GraphQLError(f"lstat {full}: no such file or directory")
    return _new(info, DirectoryState(files=fs.tree(full), origin=_origin_of(ctr, full)))


@resolves("Container", "file")
def _ctr_file(ctr: ContainerState, info: Info, path: str, expand: bool) -> FileState:
    _evaluate(info, ctr)
    full = normalize(_maybe_expand(ctr, path, expand), ctr.workdir)
    text = _core(info).evaluator.view(ctr).read(full)
    if text is None:
        raise graphql.GraphQLError(f"lstat {full}: no such file or directory")
    return _new(info, FileState(name=posixpath.basename(full), contents=text, origin=_origin_of(ctr, full)))


# --- Container: results ----------------------------------------------------------------------


def _last_exec(info: Info, ctr: ContainerState) -> Any:
    result = _evaluate(info, ctr).last_exec
    if result is None:
        raise graphql.GraphQLError("no command has been set")
    return result


@resolves("Container", "stdout")
def _stdout(ctr: ContainerState, info: Info) -> str:
    return str(_last_exec(info, ctr).stdout)


@resolves("Container", "stderr")
def _stderr(ctr: ContainerState, info: Info) -> str:
    return str(_last_exec(info, ctr).stderr)


@resolves("Container", "exitCode")
def _exit_code(ctr: ContainerState, info: Info) -> int:
    return int(_last_exec(info, ctr).exit_code)


@resolves("Container", "sync")
def _ctr_sync(ctr: ContainerState, info: Info) -> str:
    _evaluate(info, ctr)
    return ctr.id


@resolves("Container", "envVariable")
def _env_variable(ctr: ContainerState, _: Info, name: str) -> str | None:
    return ctr.env.get(name)


@resolves("Container", "workdir")
def _workdir(ctr: ContainerState, _: Info) -> str:
    return ctr.workdir


@resolves("Container", "user")
def _user(ctr: ContainerState, _: Info) -> str:
    return ctr.user


@resolves("Container", "export")
def _ctr_export(ctr: ContainerState, info: Info, path: str, **_: Any) -> str:
    # Stands in for an OCI tarball: a JSON description of the image.
    _evaluate(info, ctr)
    host = _host_path(path)
    text = json.dumps({"image": ctr.image, "env": dict(ctr.env), "workdir": ctr.workdir}, indent=2)
    snapshots.write_file(host, text)
    _core(info).record_export(host, {os.path.basename(host): text})
    return host


# --- Directory / File / Host -----------------------------------------------------------------


@resolves("Directory", "entries")
def _entries(d: DirectoryState, _: Info, path: str | None = None) -> list[str]:
    return snapshots.entries(d.files, path or "")


@resolves("Directory", "glob")
def _glob(d: DirectoryState, _: Info, pattern: str) -> list[str]:
    return sorted(rel for rel in d.files if fnmatch.fnmatchcase(rel, pattern.replace("**/", "*")))


@resolves("Directory", "file")
def _dir_file(d: DirectoryState, info: Info, path: str) -> FileState:
    rel = posixpath.normpath(path).lstrip("/")
    if rel not in d.files:
        raise graphql.GraphQLError(f"{path}: no such file or directory")
    origin = os.path.join(d.origin, rel) if d.origin else None
    return _new(info, FileState(name=posixpath.basename(rel), contents=d.files[rel], origin=origin))


@resolves("Directory", "directory")
def _dir_directory(d: DirectoryState, info: Info, path: str) -> DirectoryState:
    rel = posixpath.normpath(path).strip("/")
    files = snapshots.subtree(d.files, rel)
    if not files and rel not in {"", "."}:
        raise graphql.GraphQLError(f"{path}: no such file or directory")
    return _new(info, DirectoryState(files=files, origin=os.path.join(d.origin, rel) if d.origin else None))


@resolves("Directory", "withNewFile")
def _dir_with_new_file(d: DirectoryState, info: Info, path: str, contents: str, **_: Any) -> Node:
    rel = posixpath.normpath(path).lstrip("/")
    return _new(info, DirectoryState(files={**d.files, rel: contents}, origin=d.origin))


@resolves("Directory", "withFile")
def _dir_with_file(d: DirectoryState, info: Info, path: str, source: str, **_: Any) -> Node:
    src = _load(info, source, FileState)
    rel = posixpath.normpath(path).lstrip("/")
    return _new(info, DirectoryState(files={**d.files, rel: src.contents}, origin=d.origin))


@resolves("Directory", "withDirectory")
def _dir_with_directory(d: DirectoryState, info: Info, path: str, source: str, **kw: Any) -> Node:
    src = _load(info, source, DirectoryState)
    base = posixpath.normpath(path).strip("/")
    added = snapshots.select(src.files, kw["include"], kw["exclude"])
    merged = {**d.files, **{posixpath.normpath(posixpath.join(base, rel)): t for rel, t in added.items()}}
    return _new(info, DirectoryState(files=merged, origin=d.origin))


@resolves("Directory", "export")
def _dir_export(d: DirectoryState, info: Info, path: str, wipe: bool) -> str:
    host = _host_path(path)
    snapshots.write_tree(host, d.files, wipe=wipe)
    _core(info).record_export(host, dict(d.files))
    return host


@resolves("File", "contents")
def _contents(f: FileState, _: Info, offsetLines: int | None = None, limitLines: int | None = None) -> str:
    if offsetLines is None and limitLines is None:
        return f.contents
    lines = f.contents.splitlines(keepends=True)[offsetLines or 0 :]
    return "".join(lines if limitLines is None else lines[:limitLines])


@resolves("File", "export")
def _file_export(f: FileState, info: Info, path: str, **_: Any) -> str:
    host = _host_path(path)
    if os.path.isdir(host):
        host = os.path.join(host, f.name)
    snapshots.write_file(host, f.contents)
    _core(info).record_export(host, {f.name: f.contents})
    return host


@resolves("File", "name")
def _file_name(f: FileState, _: Info) -> str:
    return f.name


@resolves("File", "size")
def _file_size(f: FileState, _: Info) -> int:
    return len(f.contents.encode())


@resolves("Host", "directory")
def _host_directory(_: HostState, info: Info, path: str, **kw: Any) -> DirectoryState:
    root = _host_path(path)
    view = ("directory", root, tuple(kw["include"]), tuple(kw["exclude"]), kw["gitignore"])

    def read() -> DirectoryState:
        try:
            files = snapshots.read_tree(root)
        except FileNotFoundError as missing:
            raise graphql.GraphQLError(str(missing)) from None
        selected = snapshots.select(files, kw["include"], kw["exclude"])
        return DirectoryState(files=selected, origin=root, content_key=digest("host", view, sorted(selected.items())))

    return _snapshot(info, view, read, kw["noCache"])


@resolves("Host", "file")
def _host_file(_: HostState, info: Info, path: str, noCache: bool) -> FileState:
    full = _host_path(path)

    def read() -> FileState:
        if not os.path.isfile(full):
            raise graphql.GraphQLError(f"lstat {full}: no such file or directory")
        text = snapshots.read_text(full)
        return FileState(
            name=os.path.basename(full), contents=text, origin=full, content_key=digest("host", full, text)
        )

    return _snapshot(info, ("file", full), read, noCache)


def _snapshot(info: Info, view: tuple[Any, ...], read: Callable[[], N], no_cache: bool) -> N:
    """A host read, once per session unless ``noCache`` (then read again, and kept as the
    session's snapshot from now on)."""
    session = _session(info)
    with session.lock:
        kept = session.host_snapshots.get(view)
    if kept is not None and not no_cache:
        return kept  # type: ignore[no-any-return]
    obj = read()
    _core(info).registry.add(obj)
    with session.lock:
        session.host_snapshots[view] = obj
    return obj


# --- Secret / modules / common ---------------------------------------------------------------


@resolves("Secret", "name")
def _secret_name(s: SecretState, _: Info) -> str:
    return s.name


@resolves("Secret", "plaintext")
def _secret_plaintext(s: SecretState, info: Info) -> str:
    return _core(info).secret_value(s)


@resolves("ModuleSource", "asModule")
def _as_module(src: ModuleSourceState, info: Info) -> ModuleState:
    spec = _core(info).modules[src.ref]
    return _new(info, ModuleState(ref=src.ref, name=spec.name))


@resolves("Module", "name")
def _module_name(m: ModuleState, _: Info) -> str:
    return m.name


@resolves("Module", "serve")
def _serve(m: ModuleState, info: Info, **_: Any) -> None:
    core, session = _core(info), _session(info)
    spec = core.modules[m.ref]
    with session.lock:
        loaded = session.served.get(spec.name)
        if loaded is not None and loaded.ref != spec.ref:
            raise graphql.GraphQLError(
                f"failed to serve module {spec.name!r} from {spec.ref!r}: module {spec.name!r} is already "
                f"loaded from {loaded.ref!r} in this session; a session loads one version of a module"
            )
        served = {**session.served, spec.name: spec}
        session.schema = executable_schema(list(served.values()))
        session.served = served


def _make_record(info: Info) -> typedefs.Make:
    def make(graphql_type: str, values: dict[str, Any]) -> typedefs.Record:
        record = typedefs.record_class(graphql_type)(values=values)
        return _new(info, record, key=digest("record", graphql_type, record.id))

    return make


@resolves("Module", "objects")
def _module_objects(m: ModuleState, info: Info) -> list[typedefs.Record]:
    return typedefs.module_objects(_core(info).modules[m.ref], _make_record(info))


@resolves("Module", "enums")
def _module_enums(m: ModuleState, info: Info) -> list[typedefs.Record]:
    return typedefs.module_enums(_core(info).modules[m.ref], _make_record(info))


def _record_field(record: typedefs.Record, info: Info, **_: Any) -> Any:
    if info.field_name in record.values:
        return record.values[info.field_name]
    if info.field_name in {"description", "sourceModuleName"}:
        return ""
    if info.field_name == "deprecated":
        return None
    return _not_modelled(record, info)


def _id(obj: Node, _: Info) -> str:
    return obj.id


def _module_field(spec: ModuleSpec) -> Resolver:
    def resolve(_: None, info: Info, **kw: Any) -> ModuleObject:
        key = digest(spec.ref, {k: _canonical(info, v) for k, v in kw.items()})
        if spec.constructor is None:
            return ModuleObject(module=spec.name, key=key)
        value = _call(spec, spec.constructor, info, None, kw)
        return ModuleObject(module=spec.name, value=value, key=key)

    return resolve


def _call(spec: ModuleSpec, fn: FunctionSpec, info: Info, self_value: Any, kw: dict[str, Any]) -> Any:
    """Call a module function with its GraphQL arguments made Python values."""
    args: dict[str, Any] = {}
    for name, value in kw.items():
        arg = fn.args[name]
        if value is not None and arg.kind == "enum" and arg.enum is not None:
            value = [arg.enum[v] for v in value] if isinstance(value, list) else arg.enum[value]
        elif value is not None and arg.kind == "object":
            value = [_load(info, v, Node) for v in value] if isinstance(value, list) else _load(info, value, Node)
        args[arg.python_name] = value
    try:
        return fn.call(self_value, **args) if fn.takes_self else fn.call(**args)
    except Exception as error:  # the function's own failure, as the engine reports it
        raise graphql.GraphQLError(f"call {spec.name}.{fn.graphql_name}: {error}") from None


def _function_field(spec: ModuleSpec, name: str) -> Resolver:
    fn = spec.functions[name]
    returns = fn.returns.rstrip("!")

    def resolve(obj: ModuleObject, info: Info, **kw: Any) -> Any:
        key = digest(obj.key, fn.graphql_name, {k: _canonical(info, v) for k, v in kw.items()})
        store = _core(info).function_results if fn.cache == "default" else _session(info).function_results
        missing = object()
        result = store.get(key, missing) if fn.cache != "never" else missing
        if result is missing:
            result = _call(spec, fn, info, obj.value, kw)  # raises: not cached
            if fn.cache != "never":
                store[key] = result
        if returns == "JSON":
            return json.dumps(result)
        if returns == "Directory":
            return _new(info, DirectoryState(files={str(k): str(v) for k, v in dict(result).items()}))
        if returns == "File":
            return _new(info, FileState(name=fn.graphql_name, contents=str(result)))
        return result

    return resolve


def _attribute(attribute: str) -> Resolver:
    def resolve(obj: Any, _: Info) -> Any:
        return getattr(obj, attribute)

    return resolve


def _parse_json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _parse_json_literal(node: graphql.ValueNode, variables: dict[str, Any] | None = None) -> Any:
    return _parse_json(graphql.value_from_ast_untyped(node, variables))


def _not_modelled(_: Any, info: Info, **__: Any) -> Any:
    raise graphql.GraphQLError(
        f"{info.parent_type.name}.{info.field_name} is valid but not modelled by the test engine "
        "(tests/dagger_engine/resolvers.py)"
    )


def _canonical(info: Info, value: Any) -> Any:
    """An argument for a content key: object IDs stand for their objects' keys."""
    if isinstance(value, str):
        obj = _core(info).registry.get(value)
        return {"object": obj.content_key} if obj is not None else value
    if isinstance(value, list):
        return [_canonical(info, v) for v in value]
    if isinstance(value, dict):
        return {k: _canonical(info, v) for k, v in value.items()}
    return value


def _keyed(fn: Resolver) -> Resolver:
    """Run ``fn`` with its call's content key in ``_CALL``."""

    @functools.wraps(fn)
    def resolve(parent: Any, info: Info, /, **kw: Any) -> Any:
        receiver = parent.content_key if isinstance(parent, Node) else type(parent).__name__
        call = digest(receiver, info.field_name, {k: _canonical(info, v) for k, v in kw.items()})
        token = _CALL.set(call)
        try:
            return fn(parent, info, **kw)
        finally:
            _CALL.reset(token)

    return resolve


def _interface_type(obj: Any, _info: Any, _type: Any) -> str:
    return str(obj.graphql_type)


def executable_schema(modules: list[ModuleSpec]) -> graphql.GraphQLSchema:
    """The SDK-derived schema (plus served modules) with every resolver attached."""
    if not modules:
        return _base_schema()
    return _build(modules)


@functools.cache
def _base_schema() -> graphql.GraphQLSchema:
    # Resolvers find their engine through ``info.context``: one schema object serves all.
    return _build([])


def _build(modules: list[ModuleSpec]) -> graphql.GraphQLSchema:
    schema = graphql.build_schema(SDL + "\n" + module_sdl(modules))
    for (type_name, field_name), fn in RESOLVERS.items():
        object_type = schema.get_type(type_name)
        assert isinstance(object_type, graphql.GraphQLObjectType), type_name
        object_type.fields[field_name].resolve = fn
    query = schema.query_type
    assert query is not None
    for name, field in query.fields.items():
        if name.startswith("load") and name.endswith("FromID") and field.resolve is None:
            field.resolve = _load_from_id
    for spec in modules:
        query.fields[spec.field_name].resolve = _module_field(spec)
        module_type = schema.get_type(spec.type_name)
        assert isinstance(module_type, graphql.GraphQLObjectType)
        for name in spec.functions:
            module_type.fields[name].resolve = _function_field(spec, name)
        for type_name, fields in spec.object_fields.items():
            object_type = schema.get_type(type_name)
            assert isinstance(object_type, graphql.GraphQLObjectType)
            for field_name, attribute in fields.items():
                object_type.fields[field_name].resolve = _attribute(attribute)
    for type_name in typedefs.TYPES:
        record_type = schema.get_type(type_name)
        assert isinstance(record_type, graphql.GraphQLObjectType), type_name
        for name, field in record_type.fields.items():
            if name not in {"id", "sync"} and field.resolve is None:
                field.resolve = _record_field
    for type_ in schema.type_map.values():
        if isinstance(type_, graphql.GraphQLInterfaceType):
            type_.resolve_type = _interface_type
        if not isinstance(type_, graphql.GraphQLObjectType) or type_.name.startswith("__"):
            continue
        for name, field in type_.fields.items():
            if field.resolve is None:
                field.resolve = _id if name in {"id", "sync"} else _not_modelled
            field.resolve = _keyed(field.resolve)
    json_scalar = schema.get_type("JSON")
    assert isinstance(json_scalar, graphql.GraphQLScalarType)
    # The real engine's JSON scalar travels as a string of JSON text.
    json_scalar.parse_value = _parse_json  # type: ignore[method-assign]
    json_scalar.parse_literal = _parse_json_literal  # type: ignore[method-assign]
    return schema
