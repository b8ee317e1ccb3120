# The inference image: `python -m inference.serve_cli` (FastAPI + uvicorn) in front of a torch model.
#
# No weights are baked in by default: MLCICD_MODEL names what to serve at start-up
# (`builtin` trains the tiny built-in model from the shipped corpus into
# MLCICD_CACHE; a Hugging Face id or a mounted directory loads that). Build with
# `--build-arg BAKE_BUILTIN=true` to train it at build time instead.
# Every other setting is an MLCICD_* variable too (see `mlcicd serve --help`); the
# Rollout passes the pipeline definition's serving limits that way. libjemalloc2 is
# the server's allocator: it re-executes itself on it at start (inference/allocator.py).
ARG BASE_IMAGE=nvidia/cuda:12.4.1-runtime-ubuntu22.04
FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.13.0
# The default index serves CUDA builds of torch on x86_64; pass
# https://download.pytorch.org/whl/cpu with a CPU base image.
ARG TORCH_INDEX_URL=https://pypi.org/simple
ARG BAKE_BUILTIN=false

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Distribution packages are not pinned: the base image's apt snapshot decides them.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
        libjemalloc2 \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv \
    && groupadd --gid 10001 mlcicd \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin mlcicd

WORKDIR /app

# torch first, from the chosen index, so requirements.lock cannot pull another build.
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
# CTranslate2 too (requirements-peer.lock), so that the image serves a converted
# candidate with the ctranslate2 engine (inference/engine_factory.py).
COPY requirements.lock requirements-peer.lock ./
RUN pip install --no-cache-dir -r requirements.lock -r requirements-peer.lock

# The server alone: inference/ imports nothing from pipeline/ or infra/.
COPY inference/ ./inference/
RUN mkdir -p /home/mlcicd/.cache/mlcicd \
    && chown -R 10001:10001 /home/mlcicd

USER 10001:10001
# The environment defaults to prod (fault injection refused); staging deploys set it.
ARG GIT_SHA=unknown
ENV PYTHONPATH=/app \
    MLCICD_GIT_SHA=${GIT_SHA} \
    MLCICD_MODEL=builtin \
    MLCICD_HOST=0.0.0.0 \
    MLCICD_PORT=8000 \
    MLCICD_ENVIRONMENT=prod \
    MLCICD_CACHE=/home/mlcicd/.cache/mlcicd \
    HF_HUB_OFFLINE=1

RUN if [ "${BAKE_BUILTIN}" = "true" ]; then \
        python -c "from inference.builtin_model import ensure_builtin_model as e; e('default')"; \
    fi

EXPOSE 8000
# /health answers as soon as the socket is up (the model may still be warming;
# /ready is what a load balancer should use). Start-up includes loading or training.
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('MLCICD_PORT', '8000') + '/health', timeout=4)"]

# SIGTERM drains (ready -> 503, in-flight requests finish) and exits 0.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "inference.serve_cli"]
