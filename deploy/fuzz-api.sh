#!/usr/bin/env bash
# Fuzzes a running dfe-api against its own OpenAPI document with Schemathesis: generated
# requests for every operation (valid and invalid bodies, parameters, headers, methods),
# each answer checked for a 5xx and for anything the document does not say (status, content
# type, headers, body schema). The end-to-end test `schemathesis` runs it against a TestEnv.
#
#   DFE_TOKEN=<token> deploy/fuzz-api.sh http://127.0.0.1:8080 [extra `st run` options]
#
# Schemathesis comes from PyPI into a virtualenv of its own (made on first use, reused after):
# $DFE_FUZZ_VENV, default ~/.cache/dfe/schemathesis-<version>. It needs python3 with venv and
# no network but PyPI. DFE_FUZZ_MAX_TIME bounds the run in seconds (default 120).
set -euo pipefail

VERSION=4.32.5
api=${1:?usage: DFE_TOKEN=<token> deploy/fuzz-api.sh API_URL [st run options]}
shift
: "${DFE_TOKEN:?set DFE_TOKEN to a token of the api (with every scope)}"
venv=${DFE_FUZZ_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/dfe/schemathesis-$VERSION}
max_time=${DFE_FUZZ_MAX_TIME:-120}

if ! "$venv/bin/st" --version 2>/dev/null | grep -qF "$VERSION"; then
    echo "==> installing schemathesis $VERSION into $venv" >&2
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null && [[ $(id -u) == 0 ]]; then
        # Debian ships venv apart from python3.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >&2
    fi
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$VERSION"
fi

echo "==> schemathesis $VERSION against $api (at most ${max_time}s)" >&2
# It keeps a cache of what it found in .schemathesis/ of its working directory: a throwaway
# one, so that nothing lands in the repository.
workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT
cd "$workdir"
# - every check, bar one: positive_data_acceptance expects a 2xx for any body the schema
#   allows, but a job the schema allows may still name nothing configured (a guest location
#   or cluster no configuration has), a snapshot that is not there, or an instance id in use:
#   the documented 422/404/409. Every answer is still checked against the document.
# - two workers: the machine has two cores, and the api shares them with its registry.
"$venv/bin/st" run "$api/api/v1/openapi.json" \
    --url "$api" \
    --header "Authorization: Bearer $DFE_TOKEN" \
    --checks all \
    --exclude-checks positive_data_acceptance \
    --max-time "$max_time" \
    --workers 2 \
    --request-timeout 40 \
    --seed 1 \
    "$@"
