#!/usr/bin/env bash
# Installs what tests/tests/ssh.rs needs to forward the broker's socket
# over SSH as people do (`ssh -R REMOTE_SOCKET:LOCAL_SOCKET host`): a real
# OpenSSH server and client from Debian's packages. The test runs its own
# sshd, on 127.0.0.1 only, with a host key and an authorized key it
# generates in a temporary directory; nothing here starts a service. Needs
# root, or sudo.
set -euo pipefail
have() { command -v "$1" >/dev/null 2>&1; }
if [ -x /usr/sbin/sshd ] && have ssh && have ssh-keygen; then
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
packages=(openssh-server openssh-client)
echo "tests/ssh/install.sh: installing ${packages[*]} (apt)" >&2
export DEBIAN_FRONTEND=noninteractive
# The package's own service is not wanted: nothing here may listen.
policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
fi
cleanup() { if [ -n "$policy" ]; then $sudo rm -f "$policy"; fi; }
trap cleanup EXIT
if ! $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null; then
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi
/usr/sbin/sshd -V 2>&1 | head -1 || ssh -V
