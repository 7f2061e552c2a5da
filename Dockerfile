# syntax=docker/dockerfile:1
# The operator image: `docker build -t controlled-friction:0.1.0 .`
# Stage 1 builds the wheel and installs it with its dependencies into a venv; stage 2 copies only the
# venv onto the same base, so no compiler, pip cache or source tree ships.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY controlled_friction ./controlled_friction
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/venv/bin/pip install /wheels/*.whl \
 && /opt/venv/bin/controlled-friction --help > /dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="controlled-friction" \
      org.opencontainers.image.description="Canary Rollouts with policy-driven friction and automatic rollback" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
COPY --from=builder /opt/venv /opt/venv
# A numeric non-root user (the "nonroot" uid of distroless images), so Kubernetes can verify
# runAsNonRoot without a passwd entry. The root filesystem can be mounted read-only; /tmp is scratch.
USER 65532:65532
# 9443 admission webhooks, 8080 Prometheus metrics, 8081 /healthz
EXPOSE 9443 8080 8081
ENTRYPOINT ["controlled-friction", "run"]
