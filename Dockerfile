# syntax=docker/dockerfile:1
# buddy-exporter container image.
#
#   docker build --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" -t buddy-exporter .
#   docker run --rm -p 8398:8398 buddy-exporter --demo
#   docker run --rm -p 8398:8398 -e BUDDY_TOKEN=... \
#       -v "$PWD/config.yaml:/etc/buddy-exporter/config.yaml:ro" buddy-exporter
#
# Runs as the numeric user 10001:10001 (so Kubernetes' runAsNonRoot can verify it)
# and writes nothing at run time, so a read-only root filesystem works.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build stage: a self-contained virtualenv with the exporter and its dependencies
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter/ ./exporter/

# The wheel is built first so the venv holds an ordinary install, not a link to /src.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip wheel --no-deps --wheel-dir /tmp/wheels . \
    && /opt/venv/bin/pip install /tmp/wheels/*.whl \
    && /opt/venv/bin/buddy-exporter --version

# ---- runtime stage: slim Python plus the venv, nothing else
FROM ${PYTHON_IMAGE} AS runtime

ARG VERSION=0.0.0-dev
ARG REVISION=unknown
ARG CREATED=unknown

LABEL org.opencontainers.image.title="buddy-exporter" \
      org.opencontainers.image.description="Prometheus exporter for Buddy.works CI/CD pipelines and actions" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

# No .pyc writes at run time (read-only root filesystem); logs unbuffered.
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BUDDY_EXPORTER_HEALTHCHECK_URL="http://127.0.0.1:8398/healthz"

COPY --from=build /opt/venv /opt/venv

USER 10001:10001

EXPOSE 8398

# Python's own urllib, so the image needs no curl or wget.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(0 if urllib.request.urlopen(os.environ['BUDDY_EXPORTER_HEALTHCHECK_URL'], timeout=4).status == 200 else 1)"]

ENTRYPOINT ["buddy-exporter"]
CMD ["--config.file", "/etc/buddy-exporter/config.yaml"]
