# syntax=docker/dockerfile:1
# The worker image. It holds the dagger CLI, which the SDK uses to open a session with the engine
# named by _EXPERIMENTAL_DAGGER_RUNNER_HOST (the engine itself runs separately, privileged).
ARG PYTHON_VERSION=3.12
ARG DAGGER_VERSION=0.21.11

FROM python:${PYTHON_VERSION}-slim AS dagger-cli
ARG DAGGER_VERSION
RUN apt-get update && apt-get install -y --no-install-recommends curl ca-certificates \
 && curl -fsSL https://dl.dagger.io/dagger/install.sh | DAGGER_VERSION=${DAGGER_VERSION} BIN_DIR=/usr/local/bin sh

FROM python:${PYTHON_VERSION}-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY consumer ./consumer
COPY schemas ./schemas
COPY topology ./topology
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:${PYTHON_VERSION}-slim
RUN useradd --create-home --uid 10001 adapter
COPY --from=dagger-cli /usr/local/bin/dagger /usr/local/bin/dagger
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY workflows /app/workflows
WORKDIR /app
ENV _EXPERIMENTAL_DAGGER_CLI_BIN=/usr/local/bin/dagger \
    DAGGER_ADAPTER_HEALTH_FILE=/tmp/dagger-adapter/health.json \
    DAGGER_ADAPTER_WORKFLOW_DIRECTORY=/app/workflows \
    DAGGER_ADAPTER_CACHE_DIRECTORY=/var/cache/dagger-adapter \
    PYTHONUNBUFFERED=1
RUN mkdir -p /var/cache/dagger-adapter && chown adapter /var/cache/dagger-adapter
USER adapter
# SIGTERM drains: in-flight executions finish within DAGGER_ADAPTER_DRAIN_TIMEOUT_SECONDS.
STOPSIGNAL SIGTERM
# Alive while the worker rewrites its health file (every heartbeat interval); reaches no service.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s CMD ["dagger-adapter", "health"]
ENTRYPOINT ["dagger-adapter"]
CMD ["worker"]
