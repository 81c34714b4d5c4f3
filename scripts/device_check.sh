#!/usr/bin/env bash
# The prepared GPU check (docs/performance.md): install the carried wheels, then run
# benchmarks/device_check.py with the arguments given (--budget MINUTES, --out DIR, --dry-run, ...).
#
# On a bare CUDA machine with torch: the wheels that scripts/download_wheels.sh put in wheels/
# (carried along with the working tree) are installed into a private folder without touching the
# machine's packages; the package itself runs from src/ (nothing to build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if compgen -G "wheels/*.whl" > /dev/null; then
    SITE=${HISTOGEN_SITE:-/tmp/histogen-site}
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" wheels/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
exec "$PY" benchmarks/device_check.py "$@"
