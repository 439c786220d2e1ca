#!/usr/bin/env bash
# Installs the real MCP hosts that tests/tests/connect.rs reads connect's
# entries back with, pinned by package-lock.json, from the npm registry.
# Both ship their native binary inside the registry package; nothing else
# is downloaded. Install scripts are skipped, except Claude Code's, which
# only links its binary out of the platform package.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
(cd node_modules/@anthropic-ai/claude-code && node install.cjs)
node_modules/.bin/codex --version
node_modules/.bin/claude --version
