# mlgate: the gateway and its model repository in one image, run as an unprivileged user.
#   docker build -t mlgate:0.1.0 .                                   onnxruntime on the CPU
#   docker build --build-arg VARIANT=gpu -t mlgate:0.1.0-gpu .       onnxruntime-gpu (CUDA 13)
# The only paths it writes are the volume /var/lib/mlgate (audit file and spill) and /tmp
# (--workers' metrics and policy files); /app, the working directory, may be read-only.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG VARIANT=cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY feature_store ./feature_store
COPY replay ./replay
COPY loadtests ./loadtests
# Runtime dependencies only (no dev or bench extras). onnxruntime-gpu installs the same Python
# package as onnxruntime, so it replaces it rather than joining it (README, "On a GPU").
RUN python -m venv /opt/mlgate \
 && /opt/mlgate/bin/pip install . \
 && if [ "$VARIANT" = gpu ]; then \
      /opt/mlgate/bin/pip uninstall -y onnxruntime \
      && /opt/mlgate/bin/pip install "onnxruntime-gpu[cuda,cudnn]>=1.31"; \
    elif [ "$VARIANT" != cpu ]; then echo "VARIANT is cpu or gpu, not $VARIANT" >&2; exit 1; fi

FROM ${PYTHON_IMAGE}
COPY --from=build /opt/mlgate /opt/mlgate
WORKDIR /app
COPY models ./models
RUN mkdir -p /var/lib/mlgate && chown 65534:65534 /var/lib/mlgate
VOLUME /var/lib/mlgate
# Settings are MLGATE_* variables (README, "Process settings"); point MLGATE_FEATURE_STORE at
# Redis. Every path is absolute: the working directory is not the process's to write.
ENV PATH=/opt/mlgate/bin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MLGATE_HOST=0.0.0.0 \
    MLGATE_PORT=8000 \
    MLGATE_GRPC_PORT=8001 \
    MLGATE_MODELS=/app/models \
    MLGATE_AUDIT=file:///var/lib/mlgate/audit/audit.log \
    MLGATE_AUDIT_SPILL_DIR=/var/lib/mlgate/spill
EXPOSE 8000 8001
# nobody:nogroup, by number so that Kubernetes' runAsNonRoot can verify it.
USER 65534:65534
# Python, not curl: the slim image has no curl. Ready, not just live: a draining process is
# reported unhealthy at once.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v2/health/ready' % os.environ['MLGATE_PORT'], timeout=2)"]
ENTRYPOINT ["mlgate"]
CMD ["serve"]
