"""The workflow definition format (YAML file under ``workflow_directory``, or inline mapping).

A workflow is a set of named steps; each runs a command in a container. Steps run in the
order their ``depends_on`` requires; steps that do not depend on each other run concurrently.
See ``workflows/data_processing.yml`` for a commented example.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

StepName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)]
WorkspacePath = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^/",
        description="A scratch directory mounted writable into every step, passed along depends_on, never on the host",
    ),
]


class WorkflowStep(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: StepName
    # A list of arguments (exec form), or a string run with `sh -c` (shell form).
    run: list[str] | str
    image: str | None = None  # overrides the workflow's image for this step
    environment: dict[str, str] = {}
    depends_on: list[StepName] = []
    workdir: str | None = None
    # Paths inside the container whose content is returned as outputs: name -> path.
    outputs: dict[str, str] = {}
    # A failing step fails the workflow unless it is allowed to fail.
    allow_failure: bool = False


class WorkflowDefinition(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    steps: Annotated[list[WorkflowStep], msgspec.Meta(min_length=1)]
    name: str | None = None
    image: str | None = None  # default image of every step; `container_image` overrides it
    environment: dict[str, str] = {}
    workdir: str | None = None
    # A scratch directory (absolute path) mounted writable into every step and passed along
    # `depends_on` like a volume, but never read from or written to the host: where steps
    # hand files to each other while the host volumes stay read-only.
    workspace: WorkspacePath | None = None

    def __post_init__(self) -> None:
        names = [s.name for s in self.steps]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate step names: {', '.join(dupes)}")
        known = set(names)
        for step in self.steps:
            missing = [d for d in step.depends_on if d not in known]
            if missing:
                raise ValueError(f"step {step.name!r} depends on unknown step(s): {', '.join(missing)}")
        self.execution_order()  # raises on a cycle

    def execution_order(self) -> list[list[WorkflowStep]]:
        """Steps grouped in waves: each wave depends only on earlier waves."""
        pending = {s.name: s for s in self.steps}
        done: set[str] = set()
        waves: list[list[WorkflowStep]] = []
        while pending:
            wave = [s for s in pending.values() if all(d in done for d in s.depends_on)]
            if not wave:
                raise ValueError(f"steps depend on each other in a cycle: {', '.join(sorted(pending))}")
            waves.append(wave)
            for s in wave:
                done.add(s.name)
                del pending[s.name]
        return waves
