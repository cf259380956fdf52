"""The image's build steps that can run here: the dagger CLI fetch (against a local release server,
checksums and all), and the pins that tie the image to what the tests ran: requirements.lock, the
CLI version, the numeric user."""

from __future__ import annotations

import hashlib
import http.server
import io
import re
import subprocess
import sys
import tarfile
import threading
import tomllib
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).parent.parent
FETCH = ROOT / "deploy" / "image" / "fetch_dagger_cli.py"


def dockerfile_arg(name: str) -> str:
    (value,) = re.findall(rf"^ARG {name}=(\S*)$", (ROOT / "Dockerfile").read_text(), re.M)
    return value


def locked() -> dict[str, str]:
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) ", (ROOT / "requirements.lock").read_text(), re.M))


@pytest.fixture
def release_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A directory served over HTTP on an ephemeral port, laid out like dl.dagger.io's releases."""
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", tmp_path
    finally:
        server.shutdown()


def publish(root: Path, version: str, binary: bytes, checksum: str | None = None) -> str:
    name = f"dagger_v{version}_linux_amd64.tar.gz"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("dagger")
        info.size = len(binary)
        archive.addfile(info, io.BytesIO(binary))
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    (root / version).mkdir(parents=True, exist_ok=True)
    (root / version / name).write_bytes(data)
    (root / version / "checksums.txt").write_text(f"{checksum or digest}  {name}\n{'0' * 64}  other.tar.gz\n")
    return digest


def run_fetch(base: str, dest: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(FETCH), "0.21.11", "amd64", str(dest), *extra],
        capture_output=True,
        text=True,
        check=False,
        env={"DAGGER_CLI_RELEASES_URL": base, "PATH": "/usr/bin:/bin"},
        timeout=60,
    )


def test_the_cli_fetch_installs_the_binary_whose_checksum_matches(
    release_server: tuple[str, Path], tmp_path: Path
) -> None:
    base, root = release_server
    digest = publish(root, "0.21.11", b"#!/bin/sh\necho dagger\n")
    dest = tmp_path / "dagger"
    ran = run_fetch(base, dest, "--sha256", digest)
    assert ran.returncode == 0, ran.stderr
    assert dest.read_bytes() == b"#!/bin/sh\necho dagger\n" and dest.stat().st_mode & 0o111


def test_the_cli_fetch_refuses_a_tarball_that_does_not_match(release_server: tuple[str, Path], tmp_path: Path) -> None:
    base, root = release_server
    publish(root, "0.21.11", b"tampered", checksum="1" * 64)
    dest = tmp_path / "dagger"
    ran = run_fetch(base, dest)
    assert ran.returncode != 0 and "does not match checksums.txt" in ran.stderr and not dest.exists()
    digest = publish(root, "0.21.11", b"fine")
    pinned = run_fetch(base, dest, "--sha256", "2" * 64)
    assert pinned.returncode != 0 and f"sha256 {digest} is not the pinned" in pinned.stderr and not dest.exists()


def test_the_lock_pins_what_pyproject_asks_for_with_hashes() -> None:
    pins = locked()
    text = (ROOT / "requirements.lock").read_text()
    for requirement in map(
        Requirement, tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ):
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert name in pins, f"{name} is not in requirements.lock: run `just lock`"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} does not satisfy {requirement}"
    assert all(f"{n}=={v} \\\n    --hash=sha256:" in text for n, v in pins.items())


def test_the_image_pairs_the_dagger_cli_with_the_locked_sdk_and_runs_as_a_number() -> None:
    assert dockerfile_arg("DAGGER_VERSION") == locked()["dagger-io"]
    assert locked()["dagger-io"] == version("dagger-io"), "the tests ran another SDK than the image ships"
    dockerfile = (ROOT / "Dockerfile").read_text()
    (user,) = re.findall(r"^USER (\S+)$", dockerfile, re.M)
    assert re.fullmatch(r"\d+:\d+", user) and user.split(":")[0] != "0"
    assert "--require-hashes" in dockerfile and "requirements.lock" in dockerfile
