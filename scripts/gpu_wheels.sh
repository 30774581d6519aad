#!/usr/bin/env bash
# Prepares .gpu/ (git-ignored) HERE, for a GPU machine that has torch but no pydantic and no network:
#   .gpu/wheels/*.whl      pydantic, pydantic-core (CPython 3.12, manylinux x86_64) and their pure-Python
#                          dependencies, at the versions this venv runs (scripts/gpu_check.sh installs them there)
#   .gpu/cifar10-jpeg.tar.gz  the CIFAR-10 archive for the check's training step, when one is found (19.6 MB)
# Usage: scripts/gpu_wheels.sh [--python-version 3.12] [--platform manylinux_2_17_x86_64] [--cifar PATH | --no-cifar]
# Then carry .gpu with the working tree (the whole folder is about 22 MB) and run scripts/gpu_check.sh there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=3.12
PLATFORM=manylinux_2_17_x86_64
CIFAR=../shared/datasets/cifar10-jpeg.tar.gz
while [ $# -gt 0 ]; do
  case "$1" in
    --python-version) PYVER=$2; shift 2 ;;
    --platform) PLATFORM=$2; shift 2 ;;
    --cifar) CIFAR=$2; shift 2 ;;
    --no-cifar) CIFAR=; shift ;;
    -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_wheels.sh: unknown argument $1 (allowed: --python-version V, --platform P, --cifar PATH, --no-cifar)" >&2; exit 2 ;;
  esac
done
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3; fi
# The versions of the interpreter that runs dinolab here, so the GPU machine runs the same pydantic.
pins=$("$PY" - <<'PYEOF'
from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in
               ("pydantic", "pydantic-core", "annotated-types", "typing-extensions", "typing-inspection")))
PYEOF
)
abi="cp${PYVER/./}"
rm -rf .gpu/wheels
mkdir -p .gpu/wheels
echo "downloading for CPython $PYVER ($PLATFORM): $pins"
# shellcheck disable=SC2086  # $pins is a list of requirements
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --abi "$abi" --platform "$PLATFORM" -d .gpu/wheels $pins
if [ -n "$CIFAR" ]; then
  if [ -f "$CIFAR" ]; then
    rm -f .gpu/cifar10-jpeg.tar.gz && cp "$CIFAR" .gpu/cifar10-jpeg.tar.gz && chmod u+w .gpu/cifar10-jpeg.tar.gz
  else
    echo "no CIFAR-10 archive at $CIFAR: the check will train on the synthetic shapes" >&2
    rm -f .gpu/cifar10-jpeg.tar.gz
  fi
fi
ls -l .gpu/wheels .gpu/*.tar.gz 2>/dev/null || true
size=$(du -sm .gpu | cut -f1)
echo ".gpu: ${size} MiB (the working tree and carried folders travel within 64 MiB)"
