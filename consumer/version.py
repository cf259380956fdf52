"""The installed package's version (shown in heartbeats and the AsyncAPI document)."""

from __future__ import annotations

from importlib import metadata


def package_version() -> str:
    try:
        return metadata.version("dagger-adapter")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def sdk_version() -> str:
    """The dagger-io SDK's version: the Dagger engine and CLI must be of the same."""
    try:
        return metadata.version("dagger-io")
    except metadata.PackageNotFoundError:
        return "unknown"
