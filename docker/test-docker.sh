#!/usr/bin/env bash
# `make test-docker`: build the image (docker/build-image.sh, which reuses the base image, the
# wheelhouse and the dependency layers between runs), run both compose services with the
# smoke preset, wait for fl-webapp to be healthy, post a real CIFAR-100 test image from the
# host and check the five predictions, then remove containers, volumes, network and the
# test image.
set -euo pipefail
cd "$(dirname "$0")/.."
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/docker/containers.conf}"
PYTHON="${PYTHON:-.venv/bin/python}"
IMAGE="localhost/fedcifar:test"
PROJECT="fedcifar-test"
PORT="${FEDCIFAR_TEST_PORT:-18000}"
WAIT_SECONDS="${FEDCIFAR_TEST_WAIT:-900}"
export FEDCIFAR_DATA_DIR="${FEDCIFAR_DATA_DIR:-$(cd .. && pwd)/shared/data}"
t0=$SECONDS
step() { echo "test-docker [$((SECONDS - t0))s] $*"; }

compose() {
    FEDCIFAR_IMAGE="$IMAGE" FEDCIFAR_PRESET=smoke FEDCIFAR_RUN=smoke FEDCIFAR_PORT="$PORT" \
        podman-compose -p "$PROJECT" -f compose.yaml "$@"
}

teardown() {
    local rc=$?
    step "tearing down (exit $rc)"
    if [ "$rc" -ne 0 ]; then
        podman logs --tail 30 "${PROJECT}_fl-training_1" 2>&1 | sed 's/^/  fl-training | /' || true
        podman logs --tail 30 "${PROJECT}_fl-webapp_1" 2>&1 | sed 's/^/  fl-webapp   | /' || true
    fi
    compose down -v -t 10 >/dev/null 2>&1 || true
    podman network rm -f "${PROJECT}_default" >/dev/null 2>&1 || true
    podman volume rm -f "${PROJECT}_runs" >/dev/null 2>&1 || true
    podman rmi -f "$IMAGE" >/dev/null 2>&1 || true
    left="$(podman ps -a --filter "name=${PROJECT}_" -q; podman volume ls -q --filter "name=${PROJECT}_")"
    if [ -n "$left" ]; then echo "test-docker: left behind: $left" >&2; exit 1; fi
    step "done"
    exit "$rc"
}

[ -f "$FEDCIFAR_DATA_DIR/cifar-100-python/meta" ] || { echo "test-docker: no CIFAR-100 under $FEDCIFAR_DATA_DIR" >&2; exit 1; }
for tool in podman podman-compose runc; do
    command -v "$tool" >/dev/null || { echo "test-docker: $tool missing (make docker-deps)" >&2; exit 1; }
done

trap teardown EXIT
docker/build-image.sh "$IMAGE"

step "compose up (smoke preset, web app on port $PORT)"
# podman without systemd cannot schedule healthchecks (it logs so); this script runs them itself.
compose up -d >build/compose-up.log 2>&1 || { cat build/compose-up.log >&2; exit 1; }

step "waiting for fl-webapp to be healthy"
webapp="${PROJECT}_fl-webapp_1"
until podman healthcheck run "$webapp" >/dev/null 2>&1; do
    state="$(podman inspect --format '{{.State.Status}} {{.State.ExitCode}}' "${PROJECT}_fl-training_1")"
    case "$state" in exited\ 0) ;; exited*) echo "test-docker: fl-training failed ($state)" >&2; exit 1 ;; esac
    if [ $((SECONDS - t0)) -gt "$WAIT_SECONDS" ]; then echo "test-docker: fl-webapp not healthy in time" >&2; exit 1; fi
    sleep 5
done
step "fl-webapp healthy: $(podman inspect --format '{{.State.Health.Status}}' "$webapp")"

step "posting a CIFAR-100 test image from the host"
"$PYTHON" docker/check_predict.py "http://127.0.0.1:$PORT" 0
step "answered"
curl -fsS "http://127.0.0.1:$PORT/api/model"; echo
