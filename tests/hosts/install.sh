#!/usr/bin/env bash
# Installs the real MCP hosts and tools that tests/tests/connect.rs and
# import.rs run (Codex, Claude Code, mcp-remote),
# pinned by package-lock.json, from the npm registry.
# Codex and Claude Code ship their native binary inside the registry
# package, mcp-remote is JavaScript; nothing else
# is downloaded. Install scripts are skipped, except Claude Code's, which
# only links its binary out of the platform package.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
(cd node_modules/@anthropic-ai/claude-code && node install.cjs)
node_modules/.bin/codex --version
node_modules/.bin/claude --version
