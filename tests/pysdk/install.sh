#!/usr/bin/env bash
# Installs the MCP Python SDK test server's dependencies into tests/pysdk/.venv.
# Idempotent: skips pip when the requirements' sha256 matches the marker.
set -euo pipefail

dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$dir/.venv"
req="$dir/requirements.txt"
marker="$venv/.requirements.sha256"

want="$(sha256sum "$req" | cut -d' ' -f1)"
if [[ -x "$venv/bin/python" && -f "$marker" && "$(cat "$marker")" == "$want" ]]; then
    echo "pysdk: $venv is up to date with requirements.txt"
    exit 0
fi

echo "pysdk: installing requirements.txt into $venv"
[[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
echo "$want" > "$marker"
