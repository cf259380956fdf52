"""Runners: turn typed parameters into a plan (checked before anything runs), and run the
plan against the engine."""

from __future__ import annotations

from collections.abc import Sequence

from consumer.execution.pipeline import PipelinePlan, plan_pipeline
from consumer.execution.workflow import WorkflowPlan, plan_workflow
from consumer.paths import PathRules
from schemas import ExecutionParameters, PipelineParameters, WorkflowParameters

Plan = WorkflowPlan | PipelinePlan


def plan_for(params: ExecutionParameters, rules: PathRules, *, allowed_modules: Sequence[str] = ()) -> Plan:
    """The plan of one execution; raises a permanent ``ExecutionFailure`` for anything that
    cannot run (unknown workflow, path outside the allowed roots, unknown input, a module
    outside ``allowed_modules``...)."""
    if isinstance(params, WorkflowParameters):
        return plan_workflow(params, rules)
    if isinstance(params, PipelineParameters):
        return plan_pipeline(params, rules, allowed_modules)
    raise TypeError(f"no runner for {type(params).__name__}")


__all__ = ["PipelinePlan", "Plan", "WorkflowPlan", "plan_for"]
