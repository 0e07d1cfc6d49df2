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
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked "$@"
else
    cargo test --workspace --locked -- "$@"
fi
