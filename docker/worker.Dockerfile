# syntax=docker/dockerfile:1
# GPU worker image: CUDA-capable PyTorch, the project with its `worker` extra, non-root.
#
#   docker build -f docker/worker.Dockerfile -t kandinsky-batch-worker:0.1.0 .
#   docker build -f docker/worker.Dockerfile -t kandinsky-batch-worker:0.1.0-cpu \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
#
# PyPI's Linux x86_64 torch wheels are CUDA builds that carry their own CUDA runtime and
# cuDNN as pip packages, so the base needs no CUDA toolkit: the host needs only the NVIDIA
# driver (and the container toolkit / device plugin). The CPU variant comes from PyTorch's
# CPU index and is ~10x smaller. torch is installed first and pinned, as the project asks.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://pypi.org/simple
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
    && echo "torch==${TORCH_VERSION}" > /tmp/torch-constraint.txt
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kandinsky_batch ./kandinsky_batch
COPY producer ./producer
COPY worker ./worker
# The constraint keeps the torch build chosen above (CUDA or CPU) from being replaced.
RUN pip install --no-cache-dir --constraint /tmp/torch-constraint.txt ".[worker]"

FROM ${PYTHON_IMAGE}
ARG UID=10001
ENV PATH=/opt/venv/bin:$PATH \
    KANDINSKY_BATCH_LOG_FORMAT=json \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/models/hf \
    XDG_CACHE_HOME=/tmp/.cache \
    HF_HUB_DISABLE_TELEMETRY=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    KANDINSKY_BATCH_READY_FILE=/tmp/kandinsky-batch-worker.ready
RUN groupadd --system --gid "${UID}" kb \
    && useradd --system --uid "${UID}" --gid kb --home-dir /home/kb --create-home --shell /usr/sbin/nologin kb \
    && mkdir -p /models/hf \
    && chown -R "${UID}:${UID}" /models
COPY --from=build /opt/venv /opt/venv
# Weights land here (HF_HOME); mount a volume so containers and restarts share one download.
VOLUME ["/models"]
WORKDIR /home/kb
USER ${UID}:${UID}
# Ready only when the pipelines are warm and Redis and storage answer. The first start
# downloads ~15 GB of weights, hence the long start period.
HEALTHCHECK --interval=30s --timeout=30s --start-period=30m --retries=3 \
    CMD ["kandinsky-batch", "worker", "check"]
ENTRYPOINT ["kandinsky-batch"]
CMD ["worker"]
