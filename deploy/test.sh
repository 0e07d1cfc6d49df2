#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, and the end-to-end tests against the real
# RabbitMQ, PostgreSQL and Docker engine that deploy/setup.sh installs and starts (it runs
# first, and is quick when everything is already up). Extra arguments go to the test runner,
# e.g. `deploy/test.sh -E 'test(crash)'`.
set -euo pipefail
cd "$(dirname "$0")/.."

deploy/setup.sh
echo "==> building the binaries the end-to-end tests start"
cargo build --workspace --bins --locked
echo "==> running the tests"
# The compose test (deploy/compose/test.sh) builds the images and runs the whole stack in
# containers; DFE_SKIP_COMPOSE=1 leaves it out of a quick local run.
# The fault tests restart RabbitMQ, PostgreSQL and the Docker engine, which would disturb
# any test running beside them: they run last, on their own, one at a time.
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked -E 'not binary(faults)' "$@"
    echo "==> docker compose: images, stack up, provision through it, stack down"
    [[ -n ${DFE_SKIP_COMPOSE:-} ]] || deploy/compose/test.sh
    echo "==> running the fault tests (service restarts), one at a time"
    cargo nextest run --locked -p dfe-tests --test faults -j 1 "$@"
else
    cargo test --workspace --locked --exclude dfe-tests -- "$@"
    cargo test --locked -p dfe-tests --test e2e -- "$@"
    [[ -n ${DFE_SKIP_COMPOSE:-} ]] || deploy/compose/test.sh
    cargo test --locked -p dfe-tests --test faults -- --test-threads 1 "$@"
fi
