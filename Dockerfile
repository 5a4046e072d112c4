# syntax=docker/dockerfile:1.7
#
# FlexCode images: two targets, two flavours.
#
#   target  api      `flexcode serve`: serving only (no data sets, no sources, no tests)
#   target  trainer  api + MovieLens-100K (recbole): `flexcode train pipeline ...`
#   FLAVOR  cpu      python:3.12-slim, torch 2.13.0 from the PyTorch CPU index (default)
#   FLAVOR  gpu      nvidia/cuda 13.0 base, torch 2.13.0 (CUDA 13.0) from PyPI, the `gpu`
#                    extra (faiss-gpu-cu12, onnxruntime-gpu); needs NVIDIA driver >= 580
#
#   docker build --target api -t flexcode-api:cpu .
#   docker build --target api --build-arg FLAVOR=gpu -t flexcode-api:gpu .
#   docker build --target trainer -t flexcode-trainer:cpu .
#
# The bundle is never baked in: mount it at /bundles (FLEXCODE_BUNDLE_PATH), a bundle
# directory or a bundle root whose LATEST file names the version to serve. docker-compose.yml
# and deploy/k8s/ do this; docs/deployment.md explains the choices (CUDA versions included).

ARG FLAVOR=cpu
ARG PYTHON_IMAGE=python:3.12-slim-bookworm
# Only the driver-facing part of CUDA comes from the base: torch, onnxruntime-gpu and
# faiss-gpu-cu12 bring their CUDA/cuDNN libraries as nvidia-* wheels. The base's 13.0 tag
# makes the NVIDIA container runtime refuse a host whose driver is too old for CUDA 13.0.
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-base-ubuntu24.04

# ---------------------------------------------------------------- operating system
FROM ${PYTHON_IMAGE} AS os-cpu

FROM ${CUDA_IMAGE} AS os-gpu
# Ubuntu 24.04's Python is 3.12, the same minor as the CPU flavour.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

FROM os-${FLAVOR} AS os
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# ---------------------------------------------------------------- build: /opt/venv
FROM os AS build
ARG FLAVOR
ARG TORCH_VERSION=2.13.0
WORKDIR /src
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# Third-party dependencies first: this layer is rebuilt only when pyproject.toml changes.
COPY pyproject.toml README.md ./
COPY deploy/docker/ ./deploy/docker/
RUN TORCH_VERSION="${TORCH_VERSION}" sh deploy/docker/install-deps.sh "${FLAVOR}"
# Then the project's three packages and the `flexcode` script that composes their
# commands, as a regular (non-editable) install.
COPY models ./models
COPY training ./training
COPY service ./service
COPY flexcode_cli.py ./
RUN pip install --no-deps . && flexcode --help > /dev/null

# ---------------------------------------------------------------- runtime base
FROM os AS runtime
# A fixed, unprivileged uid: Kubernetes' runAsUser and volume ownership refer to it. A
# named volume mounted on /bundles or /data starts out with these directories' owner, so
# the non-root trainer can write a bundle into an empty volume.
RUN groupadd --gid 10001 flexcode \
    && useradd --uid 10001 --gid flexcode --create-home --shell /usr/sbin/nologin flexcode \
    && mkdir -p /bundles /data \
    && chown flexcode:flexcode /bundles /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/home/flexcode \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/.config/matplotlib \
    FLEXCODE_BUNDLE_PATH=/bundles \
    FLEXCODE_JOURNAL_PATH=/data/journal.sqlite3

# ---------------------------------------------------------------- trainer
FROM runtime AS trainer
# MovieLens-100K is read from inside the recbole package (its licence forbids copying the
# files anywhere else); --no-deps because only those data files are read.
RUN pip install --no-deps recbole==1.2.1
USER flexcode
# Run directories and the processed-data cache (artifacts/cache) land on the /data volume.
WORKDIR /data
CMD ["flexcode", "train", "pipeline", "--dataset", "ml-100k", "--run-dir", "/data/runs/default", "--bundle-root", "/bundles", "--if-missing"]

# ---------------------------------------------------------------- api (default target)
FROM runtime AS api
USER flexcode
WORKDIR /home/flexcode
EXPOSE 8000
# No curl in the image: the standard library does the probe (non-2xx raises, exit 1).
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
# The same command and FLEXCODE_* environment the tests use.
CMD ["flexcode", "serve", "--host", "0.0.0.0", "--port", "8000"]
