#!/usr/bin/env bash
# Creates .venv (once) and installs dinolab with its test extras; re-runs only when pyproject.toml changes.
# torch 2.14.1 / torchvision 0.29.1 are pinned: timm needs a matching torchvision.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=".venv/.dinolab-installed"
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -m pip install -q -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import dinolab, torch, torchvision, timm, ray, mlflow" 
  echo "$want" > "$stamp"
fi
