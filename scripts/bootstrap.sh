#!/usr/bin/env bash
# Create .venv with the pinned pipeline environment (CPU torch on machines without CUDA) and
# install KneePipeline into it in editable mode. Safe to run again: it only installs what is missing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=".venv/.kneepipeline-installed"
want="$(sha256sum requirements.txt pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # torch is pinned in requirements.txt so pip never pulls a multi-GB CUDA build by accident.
  .venv/bin/python -m pip install -q -r requirements.txt
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
fi
echo "KneePipeline environment ready: $here/.venv" >&2
