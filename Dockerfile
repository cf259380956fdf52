# syntax=docker/dockerfile:1
# The worker image. It holds the dagger CLI, which the SDK uses to open a session with the engine
# named by _EXPERIMENTAL_DAGGER_RUNNER_HOST (the engine itself runs separately, privileged).
#
# Base image: pin it by digest for reproducible builds, e.g.
#   docker buildx imagetools inspect python:3.12-slim-bookworm   (the "Digest:" line)
#   docker build --build-arg PYTHON_IMAGE=python:3.12-slim-bookworm@sha256:<digest> .
# No digest is written here because none could be verified where this file was written; a digest
# copied from elsewhere and not checked would be worse than the tag.
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# --- the dagger CLI, of the same version as the dagger-io SDK in requirements.lock ---------------
FROM ${PYTHON_IMAGE} AS dagger-cli
ARG DAGGER_VERSION=0.21.11
# Optional: the release tarball's sha256 for your architecture (checked on top of checksums.txt).
ARG DAGGER_CLI_SHA256=""
ARG TARGETARCH=amd64
COPY deploy/image/fetch_dagger_cli.py /tmp/fetch_dagger_cli.py
RUN python /tmp/fetch_dagger_cli.py "${DAGGER_VERSION}" "${TARGETARCH}" /usr/local/bin/dagger \
      --sha256 "${DAGGER_CLI_SHA256}"

# --- dependencies: exactly requirements.lock, every file checked against its hash -----------------
# A layer of its own: editing the source does not reinstall a single wheel.
FROM ${PYTHON_IMAGE} AS dependencies
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements.lock /tmp/requirements.lock
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --require-hashes --no-deps --only-binary=:all: \
      -r /tmp/requirements.lock

# --- our package, as a wheel ---------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY consumer ./consumer
COPY schemas ./schemas
COPY topology ./topology
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- the image -----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/home/adapter \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    _EXPERIMENTAL_DAGGER_CLI_BIN=/usr/local/bin/dagger \
    DAGGER_ADAPTER_HEALTH_FILE=/tmp/dagger-adapter/health.json \
    DAGGER_ADAPTER_WORKFLOW_DIRECTORY=/app/workflows \
    DAGGER_ADAPTER_CACHE_DIRECTORY=/var/cache/dagger-adapter
# A numeric user (10001), so that Kubernetes' runAsNonRoot can verify it.
RUN useradd --create-home --home-dir /home/adapter --uid 10001 --user-group adapter \
 && install -d -o 10001 -g 10001 /var/cache/dagger-adapter
COPY --from=dagger-cli /usr/local/bin/dagger /usr/local/bin/dagger
COPY --from=dependencies /opt/venv /opt/venv
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-deps /wheels/dagger_adapter-*.whl
COPY workflows /app/workflows
WORKDIR /app
USER 10001:10001
# SIGTERM drains: in-flight executions finish within DAGGER_ADAPTER_DRAIN_TIMEOUT_SECONDS.
STOPSIGNAL SIGTERM
# Alive while the worker rewrites its health file (every heartbeat interval); reaches no service.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s CMD ["dagger-adapter", "health"]
ENTRYPOINT ["dagger-adapter"]
CMD ["worker"]
