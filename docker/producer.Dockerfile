# syntax=docker/dockerfile:1
# Producer image: submit, status and results. No torch: the producer never imports it.
#
#   docker build -f docker/producer.Dockerfile -t kandinsky-batch-producer:0.1.0 .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kandinsky_batch ./kandinsky_batch
COPY producer ./producer
COPY worker ./worker
RUN pip install --no-cache-dir .

FROM ${PYTHON_IMAGE}
ARG UID=10001
ENV PATH=/opt/venv/bin:$PATH \
    KANDINSKY_BATCH_LOG_FORMAT=json \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid "${UID}" kb \
    && useradd --system --uid "${UID}" --gid kb --home-dir /home/kb --create-home --shell /usr/sbin/nologin kb
COPY --from=build /opt/venv /opt/venv
WORKDIR /home/kb
USER ${UID}:${UID}
ENTRYPOINT ["kandinsky-batch"]
CMD ["--help"]
