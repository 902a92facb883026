#!/bin/sh
# hello's own health check (docs/health.md): the release file this image ships is there and names a
# version. A required check: a new deployment that fails it is rolled back by itself.
release=$(cat /usr/share/hello/release 2>/dev/null)
case "$release" in
    "hello v"*) echo "$release" ;;
    *) echo "/usr/share/hello/release is missing or wrong: '$release'"; exit 1 ;;
esac
