"""A test Dagger engine: the real dagger-io SDK talks to it over the real protocol.

    from tests.dagger_engine import TestEngine, ExecOutcome

    engine = TestEngine().start()            # 127.0.0.1:<free port>, random token
    os.environ.update(engine.session_env())  # DAGGER_SESSION_PORT / DAGGER_SESSION_TOKEN
    engine.on_exec(["pytest"], ExecOutcome(stdout="3 passed\\n"))
    ...  # async with dagger.connection(): ...
    engine.execs                              # what ran: image, args, env, mounts, secrets by name
    engine.stop()

Or the ``dagger_engine`` fixture (``fixtures.py``), which does the above with monkeypatch and
fails the test if a query was sent that the real engine's schema rejects.

Modules, one concept each: ``schema`` (SDL subset of the real schema), ``state`` (immutable
objects by ID), ``evaluation`` (lazy, memoized container chains), ``executor`` (one exec:
rule or default, records, counters), ``commands`` (default exec emulation), ``filesystem``
(container paths and mounts), ``snapshots`` (host files in and out), ``resolvers`` (field
meanings), ``modules`` (served Dagger modules), ``validation`` (the real schema check),
``server`` (HTTP listener), ``engine`` (the public ``TestEngine``), ``cli`` (stands in for the
``dagger`` CLI), ``__main__``/``standalone`` (an engine in its own process).
"""

from tests.dagger_engine.engine import ENGINE_VERSION, TestEngine
from tests.dagger_engine.records import ExecOutcome, ExecRecord, QueryProblem

__all__ = ["ENGINE_VERSION", "ExecOutcome", "ExecRecord", "QueryProblem", "TestEngine"]
