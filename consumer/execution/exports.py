"""Exports to the host: the engine writes into a private staging directory, and
``consumer.host_output`` installs the result under its checked ``OutputPath`` without
following links (see there why the engine never writes to the named path itself)."""

from __future__ import annotations

import asyncio

import dagger

from consumer.host_output import install_file, install_tree, remove_staging, staging_directory
from consumer.paths import OutputPath


async def export_directory(directory: dagger.Directory, target: OutputPath) -> None:
    """``target`` ends up holding exactly ``directory`` (files not in it are removed)."""
    staging = await asyncio.to_thread(staging_directory)
    try:
        await directory.export(str(staging))
        await asyncio.to_thread(install_tree, staging, target)
    finally:
        await asyncio.to_thread(remove_staging, staging)


async def export_file(file: dagger.File, target: OutputPath) -> None:
    staging = await asyncio.to_thread(staging_directory)
    try:
        await file.export(str(staging / "file"))
        await asyncio.to_thread(install_file, staging / "file", target)
    finally:
        await asyncio.to_thread(remove_staging, staging)
