#!/usr/bin/env bash
# deploy/setup-console.sh - what the console's browser tests need (Debian bookworm, as root;
# deploy/setup.sh runs it as one of its steps).
#
# Installs, if missing:
#   chromium        Debian's package (/usr/bin/chromium), with fonts for readable screenshots
#   node and npm    the machine's own when they are there (Node.js 18 or later), else Debian's
#                   nodejs and npm
#   playwright-core into deploy/console-tests/node_modules, at the version package-lock.json
#                   pins (npm ci); playwright-core downloads no browser, it drives /usr/bin/chromium
# and checks that chromium starts headless and that node loads playwright-core.
# Safe to run again: a second run finds everything in place and changes nothing.
set -Eeuo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TESTS_DIR="$SCRIPT_DIR/console-tests"
CHROMIUM=/usr/bin/chromium
PACKAGES=(chromium fonts-dejavu-core fonts-liberation)

export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"

say() { printf '%s\n' "$*"; }
die() { printf 'setup-console.sh: FAILED: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (it installs Debian packages)"

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
updated=0
apt_install() {
    if ((!updated)); then
        apt-get update -qq || die "apt-get update failed"
        updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" \
        || die "apt-get install $* failed"
}

# 1. chromium
missing=()
for p in "${PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done
if ((${#missing[@]})); then
    say "[console 1/3] packages: installing ${missing[*]}"
    apt_install "${missing[@]}"
fi
[[ -x $CHROMIUM ]] || die "$CHROMIUM is missing after installing chromium"
chromium_version="$("$CHROMIUM" --version 2>/dev/null | head -n1)" || die "$CHROMIUM --version failed"
say "[console 1/3] chromium: $chromium_version"

# 2. node and npm: the machine's (e.g. a newer Node.js that came with it) when usable.
node_major() { node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }
if ! command -v node >/dev/null || ! command -v npm >/dev/null || (($(node_major) < 18)); then
    say "[console 2/3] node: installing Debian's nodejs and npm"
    apt_install nodejs npm
fi
(($(node_major) >= 18)) || die "node $(node --version 2>/dev/null) is older than 18, which playwright-core needs"
say "[console 2/3] node $(node --version), npm $(npm --version)"

# 3. playwright-core, as the lock file pins it.
want="$(node -p "require('$TESTS_DIR/package-lock.json').packages['node_modules/playwright-core'].version")" \
    || die "cannot read the playwright-core version from $TESTS_DIR/package-lock.json"
have="$(node -p "require('$TESTS_DIR/node_modules/playwright-core/package.json').version" 2>/dev/null || true)"
if [[ $have != "$want" ]]; then
    say "[console 3/3] playwright-core: installing $want into $TESTS_DIR/node_modules (npm ci)"
    (cd "$TESTS_DIR" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci in $TESTS_DIR failed"
fi

# The whole chain once: node loads playwright-core, which starts chromium headless.
check="$(cd "$TESTS_DIR" && timeout 120 node --input-type=module -e "
import { chromium } from 'playwright-core';
const browser = await chromium.launch({ executablePath: '$CHROMIUM', args: ['--no-sandbox'] });
const page = await browser.newPage();
await page.setContent('<p id=ok>ok</p>');
console.log(await page.textContent('#ok'));
await browser.close();
" 2>&1)" || die "playwright-core could not drive $CHROMIUM: $check"
[[ $check == ok ]] || die "playwright-core and $CHROMIUM answered: $check"
say "[console 3/3] playwright-core $want drives $CHROMIUM headless"
