#!/usr/bin/env bash
# deploy/setup-s3.sh - a local S3-compatible server for the snapshot destinations of kind
# "s3" (Debian bookworm, run as root; deploy/setup.sh calls it).
#
# Installs (if missing) and starts, without systemd:
#   moto        moto's S3 server mode (PyPI `moto[server]`) in the virtualenv $DFE_S3_VENV,
#               listening on http://127.0.0.1:$DFE_S3_PORT, log /var/log/dfe-s3.log
# It keeps objects in memory: a restart empties it (the tests make their own buckets).
# Credentials are not checked: any access key id and secret signs a request.
# Safe to run again: a second run finds the server answering and changes nothing.
#
# Environment (all optional):
#   DFE_S3_PORT   port of the server (default 9000)
#   DFE_S3_VENV   virtualenv of moto (default /opt/dfe/s3-venv)
set -Eeuo pipefail

PORT="${DFE_S3_PORT:-9000}"
VENV="${DFE_S3_VENV:-/opt/dfe/s3-venv}"
LOG=/var/log/dfe-s3.log
PACKAGES=(python3-venv python3-pip)

die() { printf 'setup-s3.sh: FAILED: %s\n' "$*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "must run as root"
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
answers() { curl -fsS --max-time 2 -o /dev/null "http://127.0.0.1:$PORT/" 2>/dev/null; }

notes=()
missing=()
for p in "${PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done
if ((${#missing[@]})); then
    apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" || die "apt-get install ${missing[*]} failed"
    notes+=("installed ${missing[*]}")
fi

if [[ ! -x $VENV/bin/moto_server ]]; then
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv "$VENV" || die "python3 -m venv $VENV failed"
    "$VENV/bin/pip" install -q --disable-pip-version-check 'moto[server]>=5,<6' \
        || die "pip install 'moto[server]' into $VENV failed"
    notes+=("moto installed in $VENV")
fi

if answers; then
    notes+=("already running")
else
    : >>"$LOG"
    printf '\n==== %s setup-s3.sh: moto_server on 127.0.0.1:%s\n' "$(date -u +%FT%TZ)" "$PORT" >>"$LOG"
    setsid nohup "$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT" >>"$LOG" 2>&1 </dev/null &
    for ((i = 0; i < 60; i++)); do answers && break; sleep 0.5; done
    answers || { tail -n 20 "$LOG" >&2 || true; die "moto_server does not answer on 127.0.0.1:$PORT; see $LOG"; }
    notes+=("started")
fi
version="$("$VENV/bin/python" -c 'import moto; print(moto.__version__)' 2>/dev/null || echo '?')"
printf '[s3] moto %s: %s (http://127.0.0.1:%s, path-style, any credentials)\n' \
    "$version" "$(IFS=,; echo "${notes[*]}" | sed 's/,/, /g')" "$PORT"
