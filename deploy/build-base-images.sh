#!/usr/bin/env bash
# Build the base images the deploy test needs without any registry: Debian bookworm roots made
# with debootstrap on this host and `docker import`ed.
#
#   imgzoo/bookworm-python:local   minbase + python3 (3.11) + python3-venv + ca-certificates
#   imgzoo/prometheus:local        minbase + Debian's prometheus package
#
# An image whose tag already exists is kept; the debootstrap tarballs are kept under
# $IMGZOO_DEPLOY_CACHE (default /var/cache/imgzoo-deploy), so a new engine re-imports them in
# seconds. Set IMGZOO_REBUILD_BASE=1 to start over. Needs root, debootstrap and a Debian mirror.
set -euo pipefail

CACHE=${IMGZOO_DEPLOY_CACHE:-/var/cache/imgzoo-deploy}
MIRROR=${IMGZOO_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
PYTHON_TAG=${IMGZOO_PYTHON_BASE:-imgzoo/bookworm-python:local}
PROMETHEUS_TAG=${IMGZOO_PROMETHEUS_IMAGE:-imgzoo/prometheus:local}
DOCKER=${DOCKER:-docker}

log() { printf '[base-images] %s\n' "$*" >&2; }

# rootfs_tarball NAME PACKAGES -> path of a cached .tar of a debootstrapped root
rootfs_tarball() {
  local name=$1 packages=$2
  local tarball="$CACHE/$name.tar"
  if [[ -s $tarball && ${IMGZOO_REBUILD_BASE:-0} != 1 ]]; then
    echo "$tarball"
    return
  fi
  local root
  root=$(mktemp -d "$CACHE/$name.root.XXXXXX")
  chmod 755 "$root" # mktemp makes it 0700, which would become the image's `/`
  log "debootstrap $SUITE ($packages) into $root"
  # minbase: essential packages + apt; the rest comes from --include. Bounded so a stalled
  # mirror fails the build instead of hanging it.
  if ! timeout 900 debootstrap --variant=minbase --include="$packages" \
      "$SUITE" "$root" "$MIRROR" >"$CACHE/$name.debootstrap.log" 2>&1; then
    tail -n 20 "$CACHE/$name.debootstrap.log" >&2
    rm -rf "$root"
    log "debootstrap failed (log: $CACHE/$name.debootstrap.log)"
    exit 1
  fi
  # Leave out what an image never needs: package lists, downloaded .debs, docs, man pages.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
    "$root"/var/cache/apt/archives/*.deb "$root"/usr/share/doc/* "$root"/usr/share/man/* \
    "$root"/usr/share/info/* "$root"/var/log/*.log "$root"/var/log/apt/*
  # Prometheus runs as nobody and keeps its TSDB in /prometheus.
  if [[ $name == *prometheus* ]]; then
    install -d -o 65534 -g 65534 -m 755 "$root/prometheus"
  fi
  tar --numeric-owner --xattrs -C "$root" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  rm -rf "$root"
  echo "$tarball"
}

has_image() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

import_image() {
  local tag=$1 tarball=$2
  shift 2
  log "docker import $tarball as $tag"
  "$DOCKER" import "$@" "$tarball" "$tag" >/dev/null
}

mkdir -p "$CACHE"
command -v debootstrap >/dev/null || { log "debootstrap is not installed"; exit 1; }

if [[ ${IMGZOO_REBUILD_BASE:-0} == 1 ]] || ! has_image "$PYTHON_TAG"; then
  tarball=$(rootfs_tarball bookworm-python "python3,python3-venv,ca-certificates,passwd")
  import_image "$PYTHON_TAG" "$tarball" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]'
else
  log "$PYTHON_TAG exists; kept"
fi

if [[ ${IMGZOO_REBUILD_BASE:-0} == 1 ]] || ! has_image "$PROMETHEUS_TAG"; then
  tarball=$(rootfs_tarball bookworm-prometheus "prometheus,ca-certificates")
  # Debian's package ships no default config in the image's working directory; the compose
  # file mounts one at /etc/prometheus/prometheus.yml.
  import_image "$PROMETHEUS_TAG" "$tarball" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'USER nobody' \
    --change 'WORKDIR /prometheus' \
    --change 'EXPOSE 9090' \
    --change 'ENTRYPOINT ["/usr/bin/prometheus"]' \
    --change 'CMD ["--config.file=/etc/prometheus/prometheus.yml","--storage.tsdb.path=/prometheus"]'
else
  log "$PROMETHEUS_TAG exists; kept"
fi
"$DOCKER" image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E "^(${PYTHON_TAG}|${PROMETHEUS_TAG}) " >&2 || true
