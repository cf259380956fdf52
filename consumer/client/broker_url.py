"""Checking a broker URL before aio-pika sees it: its robust connection retries a malformed
URL forever (``fail_fast`` only covers connection errors), so a typo would hang the caller."""

from __future__ import annotations

from urllib.parse import urlsplit

AMQP_SCHEMES = ("amqp", "amqps")


def check_amqp_url(url: str) -> None:
    """Raise ``ValueError`` (without the URL: it may hold a password) unless ``url`` looks
    like ``amqp[s]://user:password@host[:port]/vhost``."""
    expected = "expected amqp://user:password@host:port/vhost"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ValueError(f"not a valid AMQP URL ({exc}); {expected}") from None
    if parts.scheme not in AMQP_SCHEMES:
        raise ValueError(f"not an AMQP URL (scheme {parts.scheme!r}); {expected}")
    if not parts.hostname:
        raise ValueError(f"the AMQP URL names no host; {expected}")
