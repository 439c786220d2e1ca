#!/usr/bin/env bash
# Installs tinyproxy (Debian), the forward proxy tests/tests/real_servers.rs
# runs on loopback to check that config.toml's `proxy` carries the daemon's
# requests. The test starts it privately; nothing here runs it. Needs root,
# or sudo.
set -euo pipefail
if command -v tinyproxy >/dev/null 2>&1; then
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
echo "tests/proxy/install.sh: installing tinyproxy (apt)" >&2
export DEBIAN_FRONTEND=noninteractive
if ! $sudo apt-get install -y -qq --no-install-recommends tinyproxy >/dev/null; then
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends tinyproxy >/dev/null
fi
tinyproxy -v
