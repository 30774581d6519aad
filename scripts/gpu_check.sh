#!/usr/bin/env bash
# The GPU path checked in one run on one CUDA device (about 5 minutes, no Ray, no MLflow): device, bench
# figures, numerics, a short training. Everything goes under --out (default $OUT when set, else ./gpu_check_out);
# a PASS/FAIL table is printed at the end. See platform/dinolab/bench/gpu_check.py.
# Usage: scripts/gpu_check.sh [--dry-run] [--out DIR] [--only STEP ...] [--data PATH | --synthetic] [--train-epochs N] ...
# Exit: 0 every step PASS, 1 a step FAIL, 3 the GPU steps could not run (no CUDA), 2 bad arguments.
# pydantic: when this Python lacks it (or has v1), the wheels in .gpu/wheels (scripts/gpu_wheels.sh, run where there is a
# network) are installed into a temporary folder put on PYTHONPATH; nothing is installed into the interpreter.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3; fi
dry=0
for arg in "$@"; do [ "$arg" = "--dry-run" ] && dry=1; done
extra=
if ! "$PY" -c "import sys, pydantic; sys.exit(int(pydantic.VERSION.split('.')[0]) < 2)" 2>/dev/null; then  # none, or v1
  wheels=(.gpu/wheels/*.whl)
  if [ ! -e "${wheels[0]}" ]; then
    echo "gpu_check.sh: $PY has no pydantic and .gpu/wheels/ holds no wheels: run scripts/gpu_wheels.sh where there is a network first" >&2
  elif [ "$dry" = 1 ]; then
    echo "would install ${#wheels[@]} wheels from .gpu/wheels into a temporary folder on PYTHONPATH: ${wheels[*]##*/}"
  else
    extra=$(mktemp -d "${TMPDIR:-/tmp}/dinolab-gpu-site.XXXXXX")
    if "$PY" -m pip --version >/dev/null 2>&1; then
      "$PY" -m pip install --quiet --no-index --no-deps --target "$extra" "${wheels[@]}" || exit 1
    else  # no pip: a wheel is a zip of site-packages content
      for w in "${wheels[@]}"; do "$PY" -m zipfile -e "$w" "$extra" || exit 1; done
    fi
    echo "installed ${#wheels[@]} wheels into $extra"
  fi
fi
export PYTHONPATH="$PWD/platform${extra:+:$extra}${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -m dinolab.bench.gpu_check "$@"
code=$?
[ -n "$extra" ] && rm -rf "$extra"
exit $code
