#!/usr/bin/env bash
# Installs what tests/tests/import.rs needs to test the logins Codex keeps
# in the OS keyring: a D-Bus session bus (dbus-daemon, dbus-send) and a
# Secret Service, GNOME Keyring, from Debian's packages. The test starts
# both privately (its own bus, its own keyring in the test's HOME); nothing
# here runs them. Needs root, or sudo.
set -euo pipefail
have() { command -v "$1" >/dev/null 2>&1; }
if have gnome-keyring-daemon && have dbus-daemon && have dbus-send; then
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
packages=(gnome-keyring dbus-daemon dbus-bin)
echo "tests/keyring/install.sh: installing ${packages[*]} (apt)" >&2
export DEBIAN_FRONTEND=noninteractive
if ! $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null; then
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi
gnome-keyring-daemon --version
