#!/usr/bin/env bash
# redis-server for the Redis user-history store's tests and local use, from Debian's packages when missing.
# Installs only as root with apt-get; otherwise says how. --required: exit 1 when it is still missing.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing redis-server (apt-get) for the Redis history store"
    apt-get install -y --no-install-recommends redis-server >/dev/null 2>&1 \
        || { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends redis-server >/dev/null; }
    # The package starts a system service on 6379; the tests start their own servers on free ports.
    if command -v systemctl >/dev/null 2>&1; then systemctl disable --now redis-server >/dev/null 2>&1 || true; fi
fi
if ! command -v redis-server >/dev/null 2>&1; then
    echo "redis-server is not installed: install Debian's redis-server package (sudo apt-get install redis-server)" \
         "or any Redis >= 6; without it the Redis store's tests are skipped" >&2
    [ "${1:-}" = "--required" ] && exit 1
fi
exit 0
