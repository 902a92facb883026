#!/bin/sh
# Build the example's workload images from Debian's busybox-static package:
#   build-workload.sh VERSION ROLE TAG      e.g. build-workload.sh 1 workload localhost/edge/workload:1
# Both roles share the busybox layer; only the last layer differs, as in a real image set.
set -eu
version=$1 role=$2 tag=$3
here=$(cd "$(dirname "$0")" && pwd)
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$here/workload/Containerfile" "$ctx/"
# Debian's busybox-static package (scripts/setup installs it); without it, its .deb from the archive.
if dpkg-query -W -f '${Status}' busybox-static 2>/dev/null | grep -q 'ok installed'; then
    cp /bin/busybox "$ctx/busybox"
else
    if [ ! -x "$here/.busybox" ]; then
        (cd "$ctx" && apt-get download busybox-static >/dev/null 2>&1 && dpkg-deb -x busybox-static_*.deb x)
        cp "$ctx/x/bin/busybox" "$here/.busybox.tmp" && mv "$here/.busybox.tmp" "$here/.busybox"
    fi
    cp "$here/.busybox" "$ctx/busybox"
fi
isolation=chroot
[ -e /sys/fs/cgroup/cgroup.controllers ] && isolation=oci
podman build -q --isolation "$isolation" --build-arg "VERSION=$version" --build-arg "ROLE=$role" \
    -t "$tag" "$ctx" >/dev/null
echo "$tag"
