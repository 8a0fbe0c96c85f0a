#!/usr/bin/env bash
# Build fedcifar's image with Flower (compose.federation.yaml) with podman:
#   docker/build-flower-image.sh [TAG]    (default localhost/fedcifar-flower:latest)
#
# 1. docker/build-image.sh builds (or reuses) the plain image and its dependency layers
#    (localhost/fedcifar-deps:<hash>), tagged $PLAIN_TAG (default localhost/fedcifar:latest);
# 2. docker/wheelhouse.py --extra flower stages the wheels the [flower] extra adds, and only
#    those (the pins of both together: Flower moves a few shared ones, e.g. fastapi);
# 3. docker/Dockerfile.flower: the dependency layers, then Flower's, then the package.
set -euo pipefail
cd "$(dirname "$0")/.."
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/docker/containers.conf}"
PYTHON="${PYTHON:-.venv/bin/python}"
TAG="${1:-localhost/fedcifar-flower:latest}"
PLAIN_TAG="${PLAIN_TAG:-localhost/fedcifar:latest}"
t0=$SECONDS
step() { echo "build-flower-image [$((SECONDS - t0))s] $*"; }

docker/build-image.sh "$PLAIN_TAG"
deps_image="$(cat build/deps-image.txt)"

step "wheelhouse: the [flower] extra over $deps_image"
"$PYTHON" docker/wheelhouse.py --extra flower --installed build/wheelhouse/requirements.txt \
    --out build/wheelhouse-flower ${WHEELHOUSE_PIP_OPTIONS:+-- $WHEELHOUSE_PIP_OPTIONS}

step "image $TAG"
podman build --format docker --layers -f docker/Dockerfile.flower --build-arg DEPS_IMAGE="$deps_image" -t "$TAG" . \
    | grep -E '^(STEP|COMMIT|Successfully)' || true
podman image exists "$TAG"
size() { podman image inspect --format '{{.Size}}' "$1" | awk '{printf "%.2f GB", $1/1e9}'; }
step "built $TAG: $(size "$TAG") ($PLAIN_TAG: $(size "$PLAIN_TAG"))"
