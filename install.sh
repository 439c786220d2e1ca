#!/usr/bin/env bash
# Builds mcpauthd and mcpauthctl, installs them side by side into cargo's
# bin directory (~/.cargo/bin), and shows the broker's status, which starts
# the daemon on demand. Needs only cargo. Says what it does before each
# step, and leaves cargo's own progress on screen.
set -euo pipefail
cd "$(dirname "$0")"

step() { printf '==> %s\n' "$*"; }

bin="${CARGO_INSTALL_ROOT:-${CARGO_HOME:-$HOME/.cargo}}/bin"

# One target directory for both, so dependencies are compiled once.
step "building and installing mcpauthd into $bin (release; the first build takes several minutes)"
cargo install --locked --path daemon --target-dir target
step "building and installing mcpauthctl into $bin (reuses the dependencies built above)"
cargo install --locked --path cli --target-dir target

step "installed mcpauthd and mcpauthctl in $bin"
case ":$PATH:" in
  *":$bin:"*) ;;
  *) echo "note: $bin is not on your PATH; add it, e.g.: export PATH=\"$bin:\$PATH\"" ;;
esac
echo "    shell completions and the man page: see \`mcpauthctl completions --help\` and \`mcpauthctl man --help\`"
step "mcpauthctl status (starts the daemon if it is not running)"
exec "$bin/mcpauthctl" status
