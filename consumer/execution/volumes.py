"""Host volumes of a command (``volumes``), planned under the path rules: read-only inputs
under the read roots; ``writable`` ones under an output root, exported back afterwards."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from consumer.paths import OutputPath, PathRules
from schemas import VolumeMount


@dataclass(slots=True, frozen=True)
class Volume:
    source: Path | None  # resolved host directory; None: the workflow's workspace (empty, never exported)
    target: str
    writable: bool  # exported back to ``output`` after the workflow succeeds
    output: OutputPath | None = None

    @property
    def read_only(self) -> bool:
        """Mounted read-only: host inputs, unless the volume is writable (under an output root)."""
        return self.source is not None and not self.writable


def plan_volumes(volumes: list[VolumeMount], rules: PathRules) -> list[Volume]:
    """Host volumes under the path rules: read-only inputs under the read roots; writable
    ones (exported back afterwards) only under an output root."""
    planned = []
    for index, v in enumerate(volumes):
        if v.writable:
            output = rules.check_writable_source(v.source, what=f"writable volume source (volumes[{index}])")
            planned.append(Volume(source=output.path, target=v.target, writable=True, output=output))
        else:
            source = rules.host_directory(v.source, what=f"volume source (volumes[{index}])")
            planned.append(Volume(source=source, target=v.target, writable=False))
    return planned
