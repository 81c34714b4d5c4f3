#!/usr/bin/env bash
# Download, on a machine with network, the wheels scripts/device_check.sh installs on a bare GPU
# machine (CUDA + torch + a scientific Python stack, no network) into wheels/ (git-ignored).
#
# Only what such a machine lacks for the GPU checks: diffusers and what it needs beyond the usual
# stack. Give more NAME==VERSION arguments to add packages (e.g. a transformers matching yours).
# The target is CPython 3.12 on manylinux x86-64 (set PY_VERSION for another Python).
# Carry the folder with the working tree (the device tool: carry ["wheels"]); it must stay well
# under the 64 MiB the tree may weigh: the default set is about 5 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PY_VERSION=${PY_VERSION:-3.12}
version() {  # the version installed here (so the GPU machine runs what the tests ran), else none
    "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1" 2>/dev/null || true
}
pins=()
for name in diffusers importlib-metadata; do
    v=$(version "$name")
    pins+=("$name${v:+==$v}")
done
pins+=("$@")
mkdir -p wheels
"$PY" -m pip download --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d wheels "${pins[@]}"
du -ch wheels/*.whl | tail -1
