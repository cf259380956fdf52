"""A test Dagger engine: the real dagger-io SDK talks to it over the real protocol.

    from tests.dagger_engine import TestEngine, ExecOutcome

    engine = TestEngine().start()            # 127.0.0.1:<free port>, random token
    os.environ.update(engine.session_env())  # DAGGER_SESSION_PORT / DAGGER_SESSION_TOKEN
    engine.on_exec(["pytest"], ExecOutcome(stdout="3 passed\\n"))
    ...  # async with dagger.connection(): ...
    engine.execs                              # what ran: image, args, env, mounts, secrets by name
    engine.stop()

Or the ``dagger_engine`` fixture (``fixtures.py``), which does the above with monkeypatch,
declares the suite's public images, and fails the test if a query was refused as invalid.
What the engine models (and does not) is in ``README.md`` next to this file.

Modules, one concept each: ``schema`` (the API, derived from the installed SDK's generated
client), ``validation`` (refusing invalid queries like a real engine), ``state`` (immutable
objects by ID, with content keys), ``evaluation`` (lazy container chains, the engine-wide
operation cache), ``executor`` (one exec: rule or default, records, counters), ``commands``
(default exec emulation, commands an image has), ``images`` (declared images, registries and
their errors), ``sessions`` (per-session credentials, host snapshots, modules),
``filesystem`` (container paths, mounts, read-only mounts), ``snapshots`` (host files in and
out), ``resolvers`` (field meanings), ``modules`` (served Dagger modules), ``typedefs`` (a
module's TypeDef API), ``server`` (HTTP
listener), ``engine`` (the public ``TestEngine``), ``cli`` (stands in for the ``dagger``
CLI), ``__main__``/``standalone`` (an engine in its own process).
"""

from tests.dagger_engine.engine import ENGINE_VERSION, TestEngine
from tests.dagger_engine.records import ExecOutcome, ExecRecord, QueryProblem

__all__ = ["ENGINE_VERSION", "ExecOutcome", "ExecRecord", "QueryProblem", "TestEngine"]
