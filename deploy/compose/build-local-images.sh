#!/usr/bin/env bash
# deploy/compose/build-local-images.sh - stand-ins for the upstream images docker-compose.yml
# uses, built from Debian's packages, for machines that cannot pull from a registry.
#
#   debian:bookworm-slim     a debootstrap --variant=minbase bookworm root file system, slimmed
#                            the way the official image is (no docs, man pages, locales, apt
#                            lists), imported with `docker import`
#   rabbitmq:3-management    FROM it: Debian's rabbitmq-server with the management plugin
#                            (deploy/compose/images/rabbitmq)
#   postgres:15              FROM it: Debian's postgresql-15 with an entrypoint honouring the
#                            official image's POSTGRES_* variables (deploy/compose/images/postgres)
#
# They carry the official names so that docker-compose.yml runs unchanged. Each is labelled
# org.dfe.local-stand-in=true. An image that already exists under the name is kept: an
# upstream one (on a machine that could pull it) always, ours unless its inputs changed
# (rabbitmq and postgres: their directory and the base image, hashed into the label
# org.dfe.inputs). DFE_REBUILD_LOCAL_IMAGES=1 rebuilds ours, the base included.
#
# Environment (optional):
#   DFE_DEBIAN_MIRROR   Debian mirror for debootstrap and apt inside the images
#                       (default: the first bookworm mirror in /etc/apt/sources.list*)
#   DFE_REBUILD_LOCAL_IMAGES=1   rebuild the stand-ins even when the tags exist
#
# Needs root (debootstrap), Docker, and debootstrap (installed with apt-get when missing).
set -Eeuo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
IMAGES_DIR="$SCRIPT_DIR/images"
SUITE=bookworm
BASE_IMAGE="debian:bookworm-slim"
RABBITMQ_IMAGE="rabbitmq:3-management"
POSTGRES_IMAGE="postgres:15"
LABEL="org.dfe.local-stand-in=true"

export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
export DOCKER_BUILDKIT=0   # Debian's docker.io 20.10 has no buildx; the legacy builder works

say() { printf '[local-images] %s\n' "$*"; }
die() { printf 'build-local-images.sh: %s\n' "$*" >&2; exit 1; }
trap 'printf "build-local-images.sh: command failed (line %s): %s\n" "$LINENO" "$BASH_COMMAND" >&2' ERR

[[ $(id -u) -eq 0 ]] || die "must run as root (debootstrap)"
timeout 20 docker info >/dev/null 2>&1 || die "Docker does not answer (run deploy/setup.sh)"

have_image() { docker image inspect "$1" >/dev/null 2>&1; }
ours() { [[ "$(docker image inspect -f '{{index .Config.Labels "org.dfe.local-stand-in"}}' "$1" 2>/dev/null)" == true ]]; }
keep() {   # $1: tag; true when it exists and need not be (re)built
    have_image "$1" || return 1
    if [[ ${DFE_REBUILD_LOCAL_IMAGES:-0} == 1 ]] && ours "$1"; then return 1; fi
    return 0
}
size() { docker image inspect -f '{{.Size}}' "$1" | awk '{printf "%.0f MB", $1 / 1000000}'; }

# The mirror the host's apt uses for suite $1 (default $SUITE): deb822 .sources first,
# then one-line sources.list entries. Empty when the host's sources name none.
apt_mirror() {
    local suite="${1:-$SUITE}" f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        uri="$(awk -v s="$suite" '
            /^[[:space:]]*$/ { if (u != "" && ok) { print u; exit } u = ""; ok = 0; next }
            /^URIs:/   { u = $2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == s) ok = 1 }
            END        { if (u != "" && ok) print u }' "$f" | head -n1)"
        [[ -n $uri ]] && { echo "$uri"; return; }
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $f ]] || continue
        uri="$(awk -v s="$suite" '$1 == "deb" { u = ($2 ~ /^\[/) ? $3 : $2; d = ($2 ~ /^\[/) ? $4 : $3; if (d == s) { print u; exit } }' "$f")"
        [[ -n $uri ]] && { echo "$uri"; return; }
    done
}

# The Debian mirror: DFE_DEBIAN_MIRROR, else the one the host's apt uses (so this works
# behind whatever mirror or proxy the machine is set up with).
debian_mirror() {
    local m="${DFE_DEBIAN_MIRROR:-$(apt_mirror "$SUITE")}"
    [[ -n $m ]] || die "no $SUITE mirror in /etc/apt/sources.list*: set DFE_DEBIAN_MIRROR=<mirror URL>"
    echo "$m"
}

# Its security mirror: the host's for $SUITE-security, else beside the main one.
security_mirror() {
    local m
    m="$(apt_mirror "$SUITE-security")"
    echo "${m:-${1%/debian}/debian-security}"
}

# ---------------------------------------------------------------------------------------
build_base() {
    if keep "$BASE_IMAGE"; then say "$BASE_IMAGE: present ($(size "$BASE_IMAGE")), kept"; return; fi
    command -v debootstrap >/dev/null || {
        say "installing debootstrap"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null
    }
    local mirror security rootfs
    mirror="$(debian_mirror)"
    security="$(security_mirror "$mirror")"
    rootfs="$(mktemp -d /tmp/dfe-rootfs.XXXXXX)"
    # debootstrap mounts proc and sys inside the root file system; never rm -rf through a mount.
    # shellcheck disable=SC2064
    trap "cleanup_rootfs '$rootfs'" EXIT
    say "$BASE_IMAGE: debootstrap --variant=minbase $SUITE from $mirror (a minute or two)"
    debootstrap --variant=minbase --merged-usr "$SUITE" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
        || { tail -n 20 "$rootfs.log" >&2; die "debootstrap failed (log $rootfs.log)"; }
    rm -f "$rootfs.log"

    # What the official image's build (debuerreotype --slim) configures.
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
# As in the official debian:*-slim images: no documentation, man pages or translations.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
EOF
    cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    printf 'Acquire::Languages "none";\n' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"
    printf 'Acquire::GzipIndexes "true";\n' >"$rootfs/etc/apt/apt.conf.d/docker-gzip-indexes"
    printf 'APT::AutoRemove::SuggestsImportant "false";\n' >"$rootfs/etc/apt/apt.conf.d/docker-autoremove-suggests"
    # Package scripts must not try to start services in an image build.
    printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
    chmod 0755 "$rootfs/usr/sbin/policy-rc.d"
    rm -f "$rootfs/etc/apt/sources.list"
    cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    # Bring it up to date with bookworm-updates and security, then slim what is installed.
    cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
    mountpoint -q "$rootfs/proc" || mount -t proc proc "$rootfs/proc"
    chroot "$rootfs" /bin/sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get -y -q dist-upgrade && apt-get clean' \
        >"$rootfs.upgrade.log" 2>&1 || { tail -n 20 "$rootfs.upgrade.log" >&2; die "apt-get dist-upgrade in the root file system failed"; }
    rm -f "$rootfs.upgrade.log"
    unmount_under "$rootfs"
    (
        cd "$rootfs"
        find usr/share/doc -mindepth 1 -not -name copyright -not -type d -delete
        find usr/share/doc -mindepth 1 -type d -empty -delete
        rm -rf usr/share/info/* usr/share/linda/* usr/share/lintian/overrides/* \
               usr/share/locale/* usr/share/man/* usr/share/groff/*
        rm -rf var/lib/apt/lists/* var/cache/apt/* var/cache/debconf/*-old var/lib/dpkg/*-old \
               var/log/* tmp/* dev/* proc/* sys/* run/*
        : >etc/hostname
        : >etc/resolv.conf
        rm -f etc/machine-id var/lib/dbus/machine-id
        : >etc/machine-id
    )
    say "$BASE_IMAGE: importing"
    tar -C "$rootfs" --numeric-owner --xattrs -c . \
        | docker import \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'CMD ["bash"]' \
            --change "LABEL $LABEL org.dfe.local-stand-in.source=debootstrap-minbase-$SUITE" \
            --message "debootstrap --variant=minbase $SUITE $mirror (deploy/compose/build-local-images.sh)" \
            - "$BASE_IMAGE" >/dev/null
    cleanup_rootfs "$rootfs"
    trap - EXIT
    say "$BASE_IMAGE: built ($(size "$BASE_IMAGE"))"
}

unmount_under() {   # unmounts everything mounted below $1, deepest first
    local m
    while read -r m; do umount -l "$m" 2>/dev/null || true; done < <(
        awk -v r="$1" '$2 == r || index($2, r "/") == 1 { print $2 }' /proc/mounts | sort -r)
}
cleanup_rootfs() {
    unmount_under "$1"
    if awk -v r="$1" 'index($2, r) == 1 { f = 1 } END { exit !f }' /proc/mounts; then
        printf 'build-local-images.sh: %s still has mounts; not removing it\n' "$1" >&2
        return
    fi
    rm -rf --one-file-system "$1"
}

# ---------------------------------------------------------------------------------------
build_from_dir() {   # $1: tag, $2: directory with a Dockerfile
    local tag="$1" dir="$2" log inputs
    # Our stand-ins are rebuilt when their directory or the base changed; an image that is
    # not ours (pulled from upstream) is always kept.
    inputs="$( { (cd "$dir" && find . -type f -print0 | sort -z | xargs -0 sha256sum)
                 docker image inspect -f '{{.Id}}' "$BASE_IMAGE"; } | sha256sum | cut -c1-64)"
    if keep "$tag" && { ! ours "$tag" || [[ "$(docker image inspect -f '{{index .Config.Labels "org.dfe.inputs"}}' "$tag")" == "$inputs" ]]; }; then
        say "$tag: present ($(size "$tag")), kept"
        return
    fi
    say "$tag: building from ${dir#"$SCRIPT_DIR/"} FROM $BASE_IMAGE (apt-get inside; a few minutes)"
    log="$(mktemp /tmp/dfe-local-image.XXXXXX.log)"
    if ! docker build --pull=false --force-rm --label "$LABEL" --label "org.dfe.inputs=$inputs" \
            -t "$tag" "$dir" >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        die "docker build of $tag failed (log $log)"
    fi
    rm -f "$log"
    say "$tag: built ($(size "$tag"))"
}

build_base
build_from_dir "$RABBITMQ_IMAGE" "$IMAGES_DIR/rabbitmq"
build_from_dir "$POSTGRES_IMAGE" "$IMAGES_DIR/postgres"
# Replaced stand-ins would otherwise linger as dangling images.
docker image prune -f --filter "label=org.dfe.local-stand-in=true" >/dev/null 2>&1 || true
say "ready: $BASE_IMAGE, $RABBITMQ_IMAGE, $POSTGRES_IMAGE"
