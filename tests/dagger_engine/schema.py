"""The part of the real engine's GraphQL schema (v0.21.8) this engine implements.

Hand-picked from the real schema: same type, field and argument names, argument types and
defaults, enum values -- the SDK builds its queries from the introspection result, so these
must match. Descriptions and directives are left out. ``tests/test_dagger_engine.py`` checks
every field here against the real schema when it is available.
"""

from __future__ import annotations

SDL = """
scalar JSON
scalar Platform
scalar Void

interface Node {
  id: ID!
}

interface Syncer implements Node {
  id: ID!
  sync: ID!
}

interface Exportable implements Node {
  export(path: String!): String!
  id: ID!
}

type Query {
  cacheVolume(key: String!, source: ID, sharing: CacheSharingMode = SHARED, owner: String = ""): CacheVolume!
  container(platform: Platform): Container!
  directory: Directory!
  file(name: String!, contents: String!, permissions: Int = 420): File!
  host: Host!
  moduleSource(
    refString: String!
    refPin: String = ""
    disableFindUp: Boolean = false
    allowNotExists: Boolean = false
    requireKind: ModuleSourceKind
  ): ModuleSource!
  node(id: ID!): Node
  secret(uri: String!, cacheKey: String): Secret!
  setSecret(name: String!, plaintext: String!): Secret!
  version: String!
}

type Container implements Exportable & Node & Syncer {
  directory(path: String!, expand: Boolean = false): Directory!
  envVariable(name: String!): String
  exitCode: Int!
  export(
    path: String!
    platformVariants: [ID!] = []
    forcedCompression: ImageLayerCompression
    mediaTypes: ImageMediaTypes = OCIMediaTypes
    expand: Boolean = false
  ): String!
  file(path: String!, expand: Boolean = false): File!
  from(address: String!, registryService: ID): Container!
  id: ID!
  stderr: String!
  stdout: String!
  sync: ID!
  user: String!
  withDefaultArgs(args: [String!]!): Container!
  withDirectory(
    path: String!
    source: ID!
    exclude: [String!] = []
    include: [String!] = []
    gitignore: Boolean = false
    owner: String = ""
    expand: Boolean = false
    permissions: Int
  ): Container!
  withEntrypoint(args: [String!]!, keepDefaultArgs: Boolean = false): Container!
  withEnvVariable(name: String!, value: String!, expand: Boolean = false): Container!
  withExec(
    args: [String!]!
    useEntrypoint: Boolean = false
    stdin: String = ""
    redirectStdin: String = ""
    redirectStdout: String = ""
    redirectStderr: String = ""
    expect: ReturnType = SUCCESS
    experimentalPrivilegedNesting: Boolean = false
    insecureRootCapabilities: Boolean = false
    expand: Boolean = false
    noInit: Boolean = false
  ): Container!
  withFile(
    path: String!
    source: ID!
    permissions: Int
    owner: String = ""
    expand: Boolean = false
  ): Container!
  withLabel(name: String!, value: String!): Container!
  withMountedCache(
    path: String!
    cache: ID!
    source: ID
    sharing: CacheSharingMode = SHARED
    owner: String = ""
    expand: Boolean = false
  ): Container!
  withMountedDirectory(
    path: String!
    source: ID!
    owner: String = ""
    readOnly: Boolean = false
    expand: Boolean = false
  ): Container!
  withMountedFile(path: String!, source: ID!, owner: String = "", expand: Boolean = false): Container!
  withMountedSecret(
    path: String!
    source: ID!
    owner: String = ""
    mode: Int = 256
    expand: Boolean = false
  ): Container!
  withNewFile(
    path: String!
    contents: String!
    permissions: Int = 420
    owner: String = ""
    expand: Boolean = false
  ): Container!
  withRegistryAuth(address: String!, username: String!, secret: ID!): Container!
  withSecretVariable(name: String!, secret: ID!): Container!
  withUser(name: String!): Container!
  withWorkdir(path: String!, expand: Boolean = false): Container!
  withoutEntrypoint(keepDefaultArgs: Boolean = false): Container!
  withoutEnvVariable(name: String!): Container!
  workdir: String!
}

type Directory implements Exportable & Node & Syncer {
  directory(path: String!): Directory!
  entries(path: String): [String!]!
  export(path: String!, wipe: Boolean = false): String!
  file(path: String!): File!
  glob(pattern: String!): [String!]!
  id: ID!
  sync: ID!
  withDirectory(
    path: String!
    source: ID!
    exclude: [String!] = []
    include: [String!] = []
    gitignore: Boolean = false
    owner: String = ""
    permissions: Int
  ): Directory!
  withFile(path: String!, source: ID!, permissions: Int, owner: String = ""): Directory!
  withNewFile(path: String!, contents: String!, permissions: Int = 420): Directory!
}

type File implements Exportable & Node & Syncer {
  contents(offsetLines: Int, limitLines: Int): String!
  export(path: String!, allowParentDirPath: Boolean = false): String!
  id: ID!
  name: String!
  size: Int!
  sync: ID!
}

type Host implements Node {
  directory(
    path: String!
    exclude: [String!] = []
    include: [String!] = []
    noCache: Boolean = false
    gitignore: Boolean = false
  ): Directory!
  file(path: String!, noCache: Boolean = false): File!
  id: ID!
}

type Secret implements Node {
  id: ID!
  name: String!
  plaintext: String!
}

type CacheVolume implements Node {
  id: ID!
}

type ModuleSource implements Node & Syncer {
  asModule: Module!
  id: ID!
  sync: ID!
}

type Module implements Node & Syncer {
  id: ID!
  name: String!
  serve(includeDependencies: Boolean, entrypoint: Boolean): Void
  sync: ID!
}

enum ReturnType { SUCCESS FAILURE ANY }
enum CacheSharingMode { SHARED PRIVATE LOCKED }
enum ModuleSourceKind { LOCAL_SOURCE GIT_SOURCE DIR_SOURCE LOCAL GIT DIR }
enum ImageLayerCompression { Gzip Zstd EStarGZ Uncompressed GZIP ZSTD ESTARGZ UNCOMPRESSED }
enum ImageMediaTypes { OCIMediaTypes DockerMediaTypes OCI DOCKER }
"""
