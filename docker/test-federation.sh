#!/usr/bin/env bash
# `make test-docker`, second part: compose.federation.yaml for real. Builds the Flower image
# (docker/build-flower-image.sh: the plain image's cached dependency layers plus Flower's),
# cuts 2 client shards on the host, starts a SuperLink, 2 SuperNodes (each mounting only its
# shard, read-only), the one-shot submitter (1 round of a tiny ResNet-20 config) and fl-webapp;
# waits for the submitter to report a completed run, checks that each SuperNode saw only its
# own shard, posts a real CIFAR-100 test image to the web app, then removes everything it made
# but its caches.
set -euo pipefail
cd "$(dirname "$0")/.."
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/docker/containers.conf}"
PYTHON="${PYTHON:-.venv/bin/python}"
IMAGE="localhost/fedcifar-flower:test"
PLAIN="localhost/fedcifar:fedtest"
PROJECT="fedcifar-fedtest"
PORT="${FEDCIFAR_TEST_FED_PORT:-18001}"
WAIT_SECONDS="${FEDCIFAR_TEST_WAIT:-600}"
WORK="$PWD/build/test-federation"
export FEDCIFAR_DATA_DIR="${FEDCIFAR_DATA_DIR:-$(cd .. && pwd)/shared/data}"
t0=$SECONDS
step() { echo "test-federation [$((SECONDS - t0))s] $*"; }

compose() {
    FEDCIFAR_FLOWER_IMAGE="$IMAGE" FEDCIFAR_SHARDS="$WORK/shards" FEDCIFAR_PORT="$PORT" FEDCIFAR_RUN=fedtest \
        FEDCIFAR_PRESET=paper-cpu \
        FEDCIFAR_OVERRIDES="model=resnet20 num_clients=2 clients_per_round=2 rounds=1 local_steps=3 batch_size=16 eval_limit=500 eval_batch_size=250" \
        podman-compose -p "$PROJECT" -f compose.federation.yaml "$@"
}

teardown() {
    local rc=$?
    step "tearing down (exit $rc)"
    if [ "$rc" -ne 0 ]; then
        for service in superlink supernode-0 supernode-1 fl-submit fl-webapp; do
            podman logs --tail 25 "${PROJECT}_${service}_1" 2>&1 | sed "s/^/  $service | /" || true
        done
    fi
    compose down -v -t 10 >/dev/null 2>&1 || true
    podman network rm -f "${PROJECT}_default" >/dev/null 2>&1 || true
    podman volume rm -f "${PROJECT}_runs" >/dev/null 2>&1 || true
    podman rmi -f "$IMAGE" "$PLAIN" >/dev/null 2>&1 || true
    rm -rf "$WORK"
    left="$(podman ps -a --filter "name=${PROJECT}_" -q; podman volume ls -q --filter "name=${PROJECT}_")"
    if [ -n "$left" ]; then echo "test-federation: left behind: $left" >&2; exit 1; fi
    step "done"
    exit "$rc"
}

[ -f "$FEDCIFAR_DATA_DIR/cifar-100-python/meta" ] || { echo "test-federation: no CIFAR-100 under $FEDCIFAR_DATA_DIR" >&2; exit 1; }
for tool in podman podman-compose runc; do
    command -v "$tool" >/dev/null || { echo "test-federation: $tool missing (make docker-deps)" >&2; exit 1; }
done

trap teardown EXIT
PLAIN_TAG="$PLAIN" docker/build-flower-image.sh "$IMAGE"

step "client shards on the host"
"$PYTHON" -m fedcifar partition --clients 2 --out "$WORK/partition" --export "$WORK/shards" --no-download >/dev/null
chmod a+r "$WORK"/shards/*  # the containers run as uid 10001

step "compose up (SuperLink, 2 SuperNodes, submitter, web app on 127.0.0.1:$PORT)"
compose up -d >"$WORK/compose-up.log" 2>&1 || { cat "$WORK/compose-up.log" >&2; exit 1; }

step "waiting for the run to complete"
submit="${PROJECT}_fl-submit_1"
until [ "$(podman inspect --format '{{.State.Status}}' "$submit")" = exited ]; do
    if [ $((SECONDS - t0)) -gt "$WAIT_SECONDS" ]; then echo "test-federation: the run did not end in time" >&2; exit 1; fi
    sleep 3
done
code="$(podman inspect --format '{{.State.ExitCode}}' "$submit")"
[ "$code" = 0 ] || { echo "test-federation: fl-submit exited $code (run not completed)" >&2; exit 1; }
step "run completed: $(podman logs "$submit" 2>&1 | grep -m1 'round   1/1' || true)"

step "each SuperNode holds only its own shard"
for k in 0 1; do
    files="$(podman exec "${PROJECT}_supernode-${k}_1" ls /shards)"
    [ "$files" = "client-000$k.safetensors" ] || { echo "test-federation: supernode-$k sees: $files" >&2; exit 1; }
done

step "waiting for fl-webapp to be healthy"
until podman healthcheck run "${PROJECT}_fl-webapp_1" >/dev/null 2>&1; do
    if [ $((SECONDS - t0)) -gt "$WAIT_SECONDS" ]; then echo "test-federation: fl-webapp not healthy in time" >&2; exit 1; fi
    sleep 2
done
step "posting a CIFAR-100 test image from the host"
"$PYTHON" docker/check_predict.py "http://127.0.0.1:$PORT" 0
model="$(curl -fsS "http://127.0.0.1:$PORT/api/model")"
echo "$model"
grep -q '"round":1,' <<<"$model" || { echo "test-federation: the web app does not serve round 1" >&2; exit 1; }
