#!/usr/bin/env bash
# deploy/compose/build-dfe-images.sh - builds the DFE images from deploy/docker/Dockerfile:
#
#   dfe/dfe-api:latest      the REST API (runs as uid 10001, health check GET /healthz)
#   dfe/dfe-worker:latest   the worker (uid 10001; needs the Docker socket's group)
#   dfe/dfe:latest          the CLI
#
# It compiles the workspace on the host (`cargo build --release --bins --locked`; see the
# Dockerfile for why not inside an image), stages the stripped binaries in target/dfe-docker/,
# and builds each image with the legacy builder FROM debian:bookworm-slim (made by
# build-local-images.sh when it cannot be pulled). An image whose inputs (binaries,
# Dockerfile, health check script, base image) are unchanged is not rebuilt: it carries their
# hash in the label org.dfe.inputs.
#
# Environment (optional):
#   DFE_IMAGE_PREFIX   repository prefix of the tags (default dfe)
#   DFE_IMAGE_TAG      tag (default latest)
#   DFE_SKIP_CARGO=1   use the binaries already in target/release
#   DFE_BIN_DIR=DIR    use the binaries dfe-api, dfe-worker and dfe in DIR (built elsewhere,
#                      e.g. by CI); implies DFE_SKIP_CARGO=1
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PREFIX="${DFE_IMAGE_PREFIX:-dfe}"
TAG="${DFE_IMAGE_TAG:-latest}"
BASE_IMAGE="debian:bookworm-slim"
STAGE="$ROOT/target/dfe-docker"
BINS=(dfe-api dfe-worker dfe)
BIN_DIR="${DFE_BIN_DIR:-$ROOT/target/release}"

export PATH="$HOME/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
export DOCKER_BUILDKIT=0

say() { printf '[dfe-images] %s\n' "$*"; }
die() { printf 'build-dfe-images.sh: %s\n' "$*" >&2; exit 1; }
trap 'printf "build-dfe-images.sh: command failed (line %s): %s\n" "$LINENO" "$BASH_COMMAND" >&2' ERR

cd "$ROOT"
timeout 20 docker info >/dev/null 2>&1 || die "Docker does not answer (run deploy/setup.sh)"
docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 \
    || die "no $BASE_IMAGE image: pull it, or run deploy/compose/build-local-images.sh"

if [[ ${DFE_SKIP_CARGO:-0} != 1 && -z ${DFE_BIN_DIR:-} ]]; then
    say "cargo build --release --bins --locked"
    t0=$SECONDS
    # nice: other builds and tests on the machine keep their share of the CPU.
    nice -n 10 cargo build --release --bins --locked --quiet \
        || die "cargo build --release failed (see above); the images need a building workspace"
    say "cargo build: $((SECONDS - t0)) s"
fi
mkdir -p "$STAGE"
for b in "${BINS[@]}"; do
    [[ -x $BIN_DIR/$b ]] || die "$BIN_DIR/$b missing (cargo build --release --bins)"
    # Symbols only matter to a debugger; stripped, the images are a few MB smaller.
    if command -v strip >/dev/null; then
        strip -o "$STAGE/$b.tmp" "$BIN_DIR/$b"
    else
        cp "$BIN_DIR/$b" "$STAGE/$b.tmp"
    fi
    chmod 0755 "$STAGE/$b.tmp"
    mv -f "$STAGE/$b.tmp" "$STAGE/$b"
done

inputs="$( {
    sha256sum "${BINS[@]/#/$STAGE/}" deploy/docker/Dockerfile deploy/docker/dfe-healthcheck .dockerignore \
        | awk '{print $1}'
    docker image inspect -f '{{.Id}}' "$BASE_IMAGE"
} | sha256sum | cut -c1-64)"

build() {   # $1: Dockerfile target, $2: image name
    local target="$1" image="$PREFIX/$2:$TAG" have log
    have="$(docker image inspect -f '{{index .Config.Labels "org.dfe.inputs"}}' "$image" 2>/dev/null || true)"
    if [[ $have == "$inputs" ]]; then
        say "$image: up to date ($(size "$image"))"
        return
    fi
    log="$(mktemp /tmp/dfe-image-build.XXXXXX.log)"
    if ! docker build --pull=false --force-rm -f deploy/docker/Dockerfile --target "$target" \
            --build-arg "BASE_IMAGE=$BASE_IMAGE" --label "org.dfe.inputs=$inputs" \
            -t "$image" . >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        die "docker build --target $target failed (log $log)"
    fi
    rm -f "$log"
    say "$image: built ($(size "$image"))"
}
size() { docker image inspect -f '{{.Size}}' "$1" | awk '{printf "%.0f MB", $1 / 1000000}'; }

build dfe-api dfe-api
build dfe-worker dfe-worker
build dfe-cli dfe
# Dangling layers of replaced builds would pile up on every code change.
docker image prune -f --filter "label=org.dfe.inputs" >/dev/null 2>&1 || true
say "ready: $PREFIX/dfe-api:$TAG, $PREFIX/dfe-worker:$TAG, $PREFIX/dfe:$TAG"
