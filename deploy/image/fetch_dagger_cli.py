"""Fetch the dagger CLI of one release into the image (a build step; the standard library only).

Does what dagger's install.sh does, without curl, a shell pipe or apt: download the release's
tarball and checksums.txt from dl.dagger.io, check the tarball's sha256 against it (and against
``--sha256`` when the build pins one), and extract the ``dagger`` binary.

    python fetch_dagger_cli.py VERSION ARCH DEST [--sha256 HEX]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import tarfile
import urllib.request

BASE = os.environ.get("DAGGER_CLI_RELEASES_URL", "https://dl.dagger.io/dagger/releases")  # a mirror, or tests


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as response:
        return bytes(response.read())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("version", help="e.g. 0.21.11 (the dagger-io SDK's version)")
    parser.add_argument("arch", help="amd64 or arm64 (Docker's TARGETARCH)")
    parser.add_argument("dest", help="where the binary goes, e.g. /usr/local/bin/dagger")
    parser.add_argument("--sha256", default="", help="the tarball's expected sha256, if pinned")
    args = parser.parse_args()
    version = args.version.lstrip("v")
    tarball = f"dagger_v{version}_linux_{args.arch}.tar.gz"
    data = fetch(f"{BASE}/{version}/{tarball}")
    digest = hashlib.sha256(data).hexdigest()
    published = {
        name: checksum
        for checksum, name in (
            line.split() for line in fetch(f"{BASE}/{version}/checksums.txt").decode().splitlines() if line.strip()
        )
    }
    if published.get(tarball) != digest:
        sys.exit(f"{tarball}: sha256 {digest} does not match checksums.txt ({published.get(tarball)})")
    if args.sha256 and args.sha256 != digest:
        sys.exit(f"{tarball}: sha256 {digest} is not the pinned {args.sha256}")
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        member = archive.extractfile("dagger")
        if member is None:
            sys.exit(f"{tarball} holds no dagger binary")
        binary = member.read()
    with open(args.dest, "wb") as out:
        out.write(binary)
    os.chmod(args.dest, 0o755)
    print(f"dagger v{version} ({args.arch}) -> {args.dest}, tarball sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
