#!/usr/bin/env bash
# Builds the qp-engine image from the repository's Dockerfile and checks the container for
# real: HEALTHCHECK turns healthy (and how fast), the server runs as a non-root user, and
# /v2/health/ready and /predict answer from the host. Not part of CI: the image build
# compiles the release binaries and generates the 99 MB model (tens of minutes on 2 cores).
#
# Works without registry access: when the base images are not present in the daemon, it
# makes them locally:
#   debian:bookworm-slim   a debootstrap'ed Debian bookworm (minbase) root, trimmed like slim
#   qp-builder-base:local  that root plus gcc/libc6-dev and this host's Rust toolchain
#                          (`rustc --print sysroot`), passed as --build-arg RUST_IMAGE
# When no Docker daemon answers, it installs docker.io/debootstrap if missing (root only)
# and starts a private dockerd (its own socket and data root under $QP_CTEST_DIR, kept
# between runs as a build cache; the daemon itself is stopped on exit).
#
# Settings (environment):
#   QP_CTEST_DIR        work folder (default /tmp/qp-container-test)
#   QP_CTEST_PORT       host port on 127.0.0.1 mapped to the container's 8080 (default 18080)
#   QP_CTEST_CPUS       CPU limit (default: 4, the deployment plan, capped at this host's cores)
#   QP_CTEST_MEMORY     memory limit (default 1g)
#   RUST_IMAGE          builder base to use instead of making qp-builder-base:local
#   QP_CTEST_REBUILD_BASE=1  remake the local base images even if present
#   QP_CTEST_GIT_REF    build a committed revision (git archive of e.g. HEAD) instead of the
#                       working tree
#
# Usage: sudo tools/container_test.sh      (prints a summary at the end; exit 0 = all passed)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${QP_CTEST_DIR:-/tmp/qp-container-test}
PORT=${QP_CTEST_PORT:-18080}
MEMORY=${QP_CTEST_MEMORY:-1g}
HOST_CPUS=$(nproc)
CPUS=${QP_CTEST_CPUS:-$((HOST_CPUS < 4 ? HOST_CPUS : 4))}
IMAGE=qp-engine:test
CONTAINER=qp-engine-ctest
RUNTIME_BASE=debian:bookworm-slim
BUILDER_BASE=qp-builder-base:local
BUILD_TIMEOUT_S=${QP_CTEST_BUILD_TIMEOUT_S:-5400}
HEALTHY_TIMEOUT_S=60
# The start-to-healthy time the image must reach (models are built into the image, so
# start-up is only mapping them and planning).
HEALTHY_LIMIT_S=5

mkdir -p "$WORK"
FAILURES=()
SUMMARY=()
step() { printf '\n== %s\n' "$*"; }
note() { SUMMARY+=("$*"); printf '   %s\n' "$*"; }
fail() { FAILURES+=("$*"); printf '   FAIL: %s\n' "$*"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
# A docker inspect timestamp (RFC 3339, or Go's "2006-01-02 15:04:05.999 +0000 UTC" form)
# to seconds since the epoch; date(1) reads the numeric offset but not the zone name.
epoch() { date -d "$(sed -E 's/ [A-Z]{3,5}$//' <<<"$1")" +%s.%N; }

STARTED_DOCKERD=
cleanup() {
    docker rm -f "$CONTAINER" >/dev/null 2>&1 || true
    if [ -n "$STARTED_DOCKERD" ] && [ -f "$WORK/dockerd.pid" ]; then
        local pid
        pid=$(cat "$WORK/dockerd.pid")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    fi
}
trap cleanup EXIT

# ---- Docker daemon ------------------------------------------------------------------------
step "Docker daemon"
need_pkgs=()
command -v docker >/dev/null || need_pkgs+=(docker.io)
command -v debootstrap >/dev/null || need_pkgs+=(debootstrap)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || { echo "need ${need_pkgs[*]} (run as root to install them)"; exit 2; }
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}"
fi
if ! docker info >/dev/null 2>&1; then
    command -v dockerd >/dev/null || {
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io
    }
    export DOCKER_HOST="unix://$WORK/docker.sock"
    if ! docker info >/dev/null 2>&1; then
        for driver in overlay2 vfs; do
            dockerd --storage-driver "$driver" --data-root "$WORK/docker-data" \
                --exec-root "$WORK/docker-exec" --pidfile "$WORK/dockerd.pid" \
                -H "$DOCKER_HOST" >"$WORK/dockerd.log" 2>&1 &
            STARTED_DOCKERD=1
            for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
            docker info >/dev/null 2>&1 && break
            echo "   dockerd with $driver did not come up (see $WORK/dockerd.log)"
            kill "$(cat "$WORK/dockerd.pid" 2>/dev/null)" 2>/dev/null || true
            sleep 2
        done
    fi
fi
docker info >/dev/null 2>&1 || { echo "no Docker daemon"; exit 2; }
note "daemon: Docker $(docker version -f '{{.Server.Version}}'), storage $(docker info -f '{{.Driver}}')${STARTED_DOCKERD:+ (private, log $WORK/dockerd.log)}"

# ---- Base images --------------------------------------------------------------------------
step "Base images"
if [ -n "${QP_CTEST_REBUILD_BASE:-}" ] || ! docker image inspect "$RUNTIME_BASE" >/dev/null 2>&1; then
    # The mirror apt uses on this host (deb822 or one-line sources), else deb.debian.org.
    mirror=$(grep -hoE '^URIs: *http[^ ]*/debian/?$' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 | sed 's/^URIs: *//') || true
    [ -n "$mirror" ] || mirror=$(grep -hoE '^deb +http[^ ]*/debian/? +bookworm' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | head -1) || true
    mirror=${mirror:-http://deb.debian.org/debian}
    rootfs="$WORK/rootfs"
    rm -rf "$rootfs"
    echo "   debootstrap bookworm minbase from $mirror"
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1
    # Trim what the official slim image leaves out: apt caches, docs, man pages, locales.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
        "$rootfs"/usr/share/locale/*
    tar -C "$rootfs" -c . | docker import - "$RUNTIME_BASE" >/dev/null
    rm -rf "$rootfs"
    docker image rm "$BUILDER_BASE" >/dev/null 2>&1 || true
    note "runtime base: $RUNTIME_BASE made locally by debootstrap (minbase, $mirror)"
else
    note "runtime base: $RUNTIME_BASE already present"
fi

if [ -n "${RUST_IMAGE:-}" ]; then
    BUILDER_BASE=$RUST_IMAGE
    note "builder base: $RUST_IMAGE (given)"
else
    sysroot=$(rustc --print sysroot)
    toolchain=$(basename "$sysroot")
    rust_version=$("$sysroot/bin/rustc" --version)
    # This host's trust store: a TLS-intercepting egress proxy that the host trusts (and
    # that cargo and pip on the host go through) must be trusted inside the build too. It
    # gets a path of its own: installing Debian's ca-certificates in the build regenerates
    # the standard bundle.
    ca_bundle=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
    recipe=$(cat <<EOF
FROM $RUNTIME_BASE
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
ADD toolchain.tar /usr/local/rustup/toolchains/$toolchain/
COPY host-ca-bundle.crt /etc/ssl/host-ca-bundle.crt
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    SSL_CERT_FILE=/etc/ssl/host-ca-bundle.crt CARGO_HTTP_CAINFO=/etc/ssl/host-ca-bundle.crt \
    PIP_CERT=/etc/ssl/host-ca-bundle.crt
RUN mkdir -p /usr/local/cargo/bin \
 && ln -s /usr/local/rustup/toolchains/$toolchain/bin/* /usr/local/cargo/bin/ \
 && cargo --version && rustc --version
EOF
)
    # Remade when the recipe, the toolchain or the CA bundle changes.
    recipe_id=$( (echo "$recipe"; echo "$rust_version"; sha256sum <"$ca_bundle") | sha256sum | cut -c1-16)
    have_id=$(docker image inspect -f '{{index .Config.Labels "qp.recipe"}}' "$BUILDER_BASE" 2>/dev/null || true)
    if [ -n "${QP_CTEST_REBUILD_BASE:-}" ] || [ "$have_id" != "$recipe_id" ]; then
        ctx="$WORK/builder-context"
        rm -rf "$ctx" && mkdir -p "$ctx"
        # The toolchain without its HTML docs (~800 MB).
        tar -C "$sysroot" --exclude=./share/doc -cf "$ctx/toolchain.tar" .
        cp "$ca_bundle" "$ctx/host-ca-bundle.crt"
        printf '%s\nLABEL qp.recipe=%s\n' "$recipe" "$recipe_id" >"$ctx/Dockerfile"
        docker build -q -t "$BUILDER_BASE" "$ctx" >"$WORK/builder-base.log" 2>&1 || {
            cat "$WORK/builder-base.log"; exit 1; }
        rm -rf "$ctx"
        note "builder base: $BUILDER_BASE made: $RUNTIME_BASE + gcc + host toolchain ($rust_version)"
    else
        note "builder base: $BUILDER_BASE already present ($rust_version)"
    fi
fi

# ---- Image --------------------------------------------------------------------------------
step "Image build (log: $WORK/build.log)"
context=$ROOT
if [ -n "${QP_CTEST_GIT_REF:-}" ]; then
    context="$WORK/context"
    rm -rf "$context" && mkdir -p "$context"
    git -C "$ROOT" archive "$QP_CTEST_GIT_REF" | tar -x -C "$context"
    note "context: git archive $QP_CTEST_GIT_REF ($(git -C "$ROOT" rev-parse --short "$QP_CTEST_GIT_REF"))"
else
    note "context: working tree $ROOT"
fi
t0=$(now)
if ! timeout "$BUILD_TIMEOUT_S" docker build --build-arg RUST_IMAGE="$BUILDER_BASE" \
        --build-arg RUNTIME_IMAGE="$RUNTIME_BASE" -t "$IMAGE" "$context" >"$WORK/build.log" 2>&1; then
    tail -40 "$WORK/build.log"
    echo "image build failed"
    exit 1
fi
size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
note "image: $IMAGE built in $(elapsed "$t0" "$(now)") s, $(awk -v s="$size" 'BEGIN { printf "%.1f MB", s / 1e6 }')"
note "image user: $(docker image inspect -f '{{.Config.User}}' "$IMAGE"), healthcheck: $(docker image inspect -f '{{join .Config.Healthcheck.Test " "}}' "$IMAGE")"

# ---- Run ----------------------------------------------------------------------------------
step "Run with --memory $MEMORY --cpus $CPUS, 127.0.0.1:$PORT -> 8080"
docker rm -f "$CONTAINER" >/dev/null 2>&1 || true
docker run -d --name "$CONTAINER" --memory "$MEMORY" --cpus "$CPUS" -e QP_THREADS="$CPUS" \
    --read-only -p "127.0.0.1:$PORT:8080" "$IMAGE" >/dev/null
if [ "$CPUS" -lt 4 ]; then note "CPU limit $CPUS: this host has only $HOST_CPUS cores (the plan's limit is 4)"; fi

# Poll the host port (server readiness) and docker's health state (the HEALTHCHECK).
ready_at= healthy_at= status=
deadline=$(($(date +%s) + HEALTHY_TIMEOUT_S))
while [ "$(date +%s)" -lt "$deadline" ]; do
    if [ -z "$ready_at" ] && curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$PORT/v2/health/ready" 2>/dev/null; then
        ready_at=$(now)
    fi
    status=$(docker inspect -f '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "$CONTAINER")
    case "$status" in
        "running healthy") healthy_at=$(now); break ;;
        running*) ;;
        *) break ;;
    esac
    sleep 0.05
done
started=$(epoch "$(docker inspect -f '{{.State.StartedAt}}' "$CONTAINER")")
if [ -z "$healthy_at" ]; then
    docker logs "$CONTAINER" 2>&1 | tail -20
    fail "container not healthy within ${HEALTHY_TIMEOUT_S} s (state: $status)"
else
    # The end of the first passing probe is when docker marked the container healthy.
    first_ok=$(docker inspect -f '{{range .State.Health.Log}}{{if eq .ExitCode 0}}{{.End}}{{"\n"}}{{end}}{{end}}' "$CONTAINER" | head -1)
    to_healthy=$(elapsed "$started" "$(epoch "$first_ok")")
    note "start -> healthy (first passing HEALTHCHECK probe): $to_healthy s (limit $HEALTHY_LIMIT_S s)"
    [ -n "$ready_at" ] && note "start -> /v2/health/ready answering on the host: $(elapsed "$started" "$ready_at") s"
    awk -v t="$to_healthy" -v l="$HEALTHY_LIMIT_S" 'BEGIN { exit !(t < l) }' ||
        fail "start-to-healthy $to_healthy s is not under $HEALTHY_LIMIT_S s"
    note "probe output: $(docker inspect -f '{{range .State.Health.Log}}{{if eq .ExitCode 0}}{{.Output}}{{end}}{{end}}' "$CONTAINER" | head -1)"
fi

# ---- Checks -------------------------------------------------------------------------------
step "Checks"
uid=$(docker exec "$CONTAINER" id -u)
pid1_uid=$(docker exec "$CONTAINER" sh -c "awk '/^Uid:/ { print \$2 }' /proc/1/status")
if [ "$uid" != 0 ] && [ "$pid1_uid" != 0 ]; then
    note "non-root: exec id -u = $uid, server (PID 1) uid = $pid1_uid"
else
    fail "runs as root (exec uid $uid, PID 1 uid $pid1_uid)"
fi

code=$(curl -sS -o "$WORK/ready.json" -w '%{http_code}' --max-time 5 "http://127.0.0.1:$PORT/v2/health/ready") || code=000
if [ "$code" = 200 ]; then note "GET /v2/health/ready: 200 $(cat "$WORK/ready.json")"; else fail "GET /v2/health/ready: $code"; fi

body='{"edge_density": 0.12, "unique_colors": 48, "entropy": 4.5, "corner_density": 0.08, "gradient_strength": 0.3, "complexity_score": 0.35}'
code=$(curl -sS -o "$WORK/predict.json" -w '%{http_code}' --max-time 30 -H 'Content-Type: application/json' \
    -d "$body" "http://127.0.0.1:$PORT/predict") || code=000
if [ "$code" = 200 ] && grep -q '"predicted_ssim"' "$WORK/predict.json"; then
    note "POST /predict (qualitynet-features): 200 $(cat "$WORK/predict.json")"
else
    fail "POST /predict (features): $code $(cat "$WORK/predict.json" 2>/dev/null)"
fi

# One image request: the full ResNet-50 model, on the bundled sample logo.
printf '{"image": "%s", "color_precision": 6}' "$(base64 -w0 "$ROOT/weights/sample_logo.png")" >"$WORK/image-request.json"
code=$(curl -sS -o "$WORK/predict-image.json" -w '%{http_code}' --max-time 60 -H 'Content-Type: application/json' \
    --data-binary "@$WORK/image-request.json" "http://127.0.0.1:$PORT/predict") || code=000
if [ "$code" = 200 ] && grep -q '"predicted_ssim"' "$WORK/predict-image.json"; then
    note "POST /predict (qualitynet, image): 200 $(cat "$WORK/predict-image.json")"
else
    fail "POST /predict (image): $code $(cat "$WORK/predict-image.json" 2>/dev/null)"
fi

# The probe must also fail when it should (nothing listens on port 1).
if out=$(docker exec "$CONTAINER" qp-engine healthcheck --url http://127.0.0.1:1/ --timeout-ms 500 2>&1); then
    fail "healthcheck against a closed port passed: $out"
else
    note "healthcheck against a closed port: exit $? ($out)"
fi

mem=$(docker stats --no-stream --format '{{.MemUsage}}' "$CONTAINER" 2>/dev/null || true)
[ -n "$mem" ] && note "memory after the checks: $mem"

# ---- Stop ---------------------------------------------------------------------------------
step "Stop (SIGTERM, drain)"
t0=$(now)
docker stop -t 30 "$CONTAINER" >/dev/null
exit_code=$(docker inspect -f '{{.State.ExitCode}}' "$CONTAINER")
if [ "$exit_code" = 0 ]; then
    note "docker stop: exited 0 after $(elapsed "$t0" "$(now)") s"
else
    fail "docker stop: exit code $exit_code"
fi
docker rm -f "$CONTAINER" >/dev/null

step "Summary"
printf '   %s\n' "${SUMMARY[@]}"
if [ ${#FAILURES[@]} -gt 0 ]; then
    printf '   FAIL: %s\n' "${FAILURES[@]}"
    exit 1
fi
echo "   all checks passed"
