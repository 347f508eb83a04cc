#!/usr/bin/env bash
# The wheels the GPU machine's image lacks for benchmarks/gpu_check.py, into a git-ignored folder (default
# .whl/gpu/), for CPython 3.12 manylinux x86-64; then checks the set and prints its size against the 64 MiB
# that one device call may carry (working tree included).
#
#   bash benchmarks/gpu_wheels.sh [DEST]          # needs the package index (PyPI) reachable; ~15 s
#
# - DeepSpeed: built here as a pure-Python wheel (DS_BUILD_OPS=0: no ops compiled; the check trains with
#   torch's AdamW, so it needs no JIT op either), at the version this venv tested.
# - Its needs that the image lacks (benchmarks/gpu_carry.py: IMAGE lists what the image has), at this venv's
#   versions: today hjson, pydantic, pydantic-core (compiled: the cp312 manylinux wheel), annotated-types,
#   typing-inspection. Nothing the image has (torch, numpy, packaging, ...) is carried, except a newer
#   typing-extensions in fallback/, which gpu_run.sh installs only if deepspeed does not import without it.
# The GPU run installs them with `pip install --no-index --no-deps --target` (benchmarks/gpu_run.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.whl/gpu}
PY=${PYTHON:-.venv/bin/python}
case "$DEST" in /*) ;; *) DEST="$PWD/$DEST" ;; esac
read -r -a NEEDS <<<"$("$PY" benchmarks/gpu_carry.py needs deepspeed)"
rm -rf "$DEST"
mkdir -p "$DEST"
echo "wheels for the GPU check into $DEST: ${NEEDS[*]}"
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-cache-dir --no-deps "${NEEDS[0]}" -w "$DEST"
for spec in "${NEEDS[@]:1}"; do
  "$PY" -m pip download -q --no-cache-dir --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "$spec"
done
# typing-extensions is on the image, but pydantic needs a recent one: carried apart, installed by gpu_run.sh only
# when deepspeed does not import with the image's own.
"$PY" -m pip download -q --no-cache-dir --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  -d "$DEST/fallback" "typing-extensions==$("$PY" -c 'import importlib.metadata as m; print(m.version("typing-extensions"))')"
"$PY" benchmarks/gpu_carry.py requires "$DEST"
"$PY" benchmarks/gpu_carry.py size "$DEST"
