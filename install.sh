#!/usr/bin/env bash
# Builds mcpauthd and mcpauthctl, installs them side by side into cargo's
# bin directory (~/.cargo/bin), and shows the broker's status, which starts
# the daemon on demand. Needs only cargo.
set -euo pipefail
cd "$(dirname "$0")"

# One target directory for both, so dependencies are compiled once.
cargo install --locked --quiet --path daemon --target-dir target
cargo install --locked --quiet --path cli --target-dir target

bin="${CARGO_INSTALL_ROOT:-${CARGO_HOME:-$HOME/.cargo}}/bin"
echo "installed mcpauthd and mcpauthctl in $bin"
case ":$PATH:" in
  *":$bin:"*) ;;
  *) echo "note: $bin is not on your PATH; add it, e.g.: export PATH=\"$bin:\$PATH\"" ;;
esac
exec "$bin/mcpauthctl" status
