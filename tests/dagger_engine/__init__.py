"""A test Dagger engine: the real dagger-io SDK talks to it over the real protocol.

from tests.dagger_engine import TestEngine, ExecOutcome
"""

from tests.dagger_engine.engine import ENGINE_VERSION, TestEngine
from tests.dagger_engine.records import ExecOutcome, ExecRecord, QueryProblem

__all__ = ["ENGINE_VERSION", "ExecOutcome", "ExecRecord", "QueryProblem", "TestEngine"]
