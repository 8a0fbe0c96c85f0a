# syntax=docker/dockerfile:1
# fedcifar: one CPU image for both compose services, the federated trainer (fl-training)
# and the web app (fl-webapp). Build with `make docker-image` (podman) or, with Docker,
# `python docker/wheelhouse.py && docker build -t fedcifar .`.
#
# Layers go from slow-changing to fast-changing: system Python, then the pinned dependencies
# (torch: gigabytes), then the package itself. A code edit rebuilds only the last layers.

# Any Debian-like image: the official python:3.11-slim, or a local debootstrap import
# (see docker/base-image.sh) on machines without a registry.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE} AS deps

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    FEDCIFAR_DATA_DIR=/data \
    MPLCONFIGDIR=/tmp/matplotlib

# Python 3.11 with venv (python:3.11-slim has it; a bare Debian base gets it from apt),
# a non-root user, and the mount points for the run directory and the dataset.
RUN if ! python3 -c "import venv, ensurepip" 2>/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv \
    && useradd --create-home --uid 10001 --user-group app \
    && mkdir -p /runs /data \
    && chown app:app /runs

# Dependencies, offline: exact pins and the wheels from docker/wheelhouse.py. The wheels are
# bind-mounted, not copied, so they never become a layer of their own; the pins are copied so
# that changing them (and only that) invalidates this layer.
COPY build/wheelhouse/requirements.txt /opt/requirements.txt
RUN --mount=type=bind,source=build/wheelhouse,target=/wheelhouse \
    pip install --no-index --find-links /wheelhouse -r /opt/requirements.txt

# The package, without dependencies (they are all above). `--target deps` stops before this,
# which lets CI keep the dependency layers as an image of their own between runs.
FROM deps AS app
COPY pyproject.toml README.md /tmp/fedcifar/
COPY src /tmp/fedcifar/src
RUN pip install --no-index --no-deps --no-build-isolation /tmp/fedcifar \
    && rm -rf /tmp/fedcifar \
    && python -c "import fedcifar.serve.main"

USER app
WORKDIR /home/app
EXPOSE 8000
# Healthy = the web app answers and holds a model (it says 503 while waiting for round 1).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
CMD ["fedcifar", "serve", "--run", "/runs/paper", "--host", "0.0.0.0", "--port", "8000"]
