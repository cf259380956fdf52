"""The one error type the wire contract raises."""

from __future__ import annotations


class InvalidMessage(ValueError):
    """A message or parameter set that does not satisfy the contract.

    ``str(error)`` names the field and what was wrong (msgspec's ``... - at `$.field```),
    so it can be shown to the person who sent the message as it is.
    """

    def __init__(self, message: str, *, task_id: str | None = None) -> None:
        super().__init__(message)
        self.task_id = task_id
