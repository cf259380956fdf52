"""The operator console in the browser (``dagger-adapter console``): the fleet, the live flow
of results and status events, one task's story, the dead-letter queue, and submitting commands.

Built on the client library (``consumer.client``) like the CLI; needs the ``console`` extra
(Starlette, uvicorn, Jinja2, sse-starlette, python-multipart)."""

from consumer.webconsole.app import create_app

__all__ = ["create_app"]
