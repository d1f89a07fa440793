#!/usr/bin/env bash
# Install everything Heliostat needs on a Debian machine: system libraries (apt), a .venv with
# the package (Cython kernels compiled, gRPC modules generated) and its test extras.
# Idempotent: when nothing that affects the install changed since the last run, it exits at once.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for c in python3.11 python3; do
    if command -v "$c" >/dev/null 2>&1; then PY=$c; break; fi
  done
fi

need_apt=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for pkg in libopenjp2-7 libopenjp2-7-dev build-essential pkg-config; do
  have_pkg "$pkg" || need_apt+=("$pkg")
done
if [ -z "$PY" ]; then need_apt+=(python3 python3-dev python3-venv); PY=python3; fi
if ! "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1; then need_apt+=(python3-venv); fi
if ! "$PY" -c 'import sysconfig, os, sys; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)'; then
  need_apt+=(python3-dev)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "bootstrap: installing system packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# The stamp covers every file that changes what gets installed.
stamp_src=$( { "$PY" --version; cat pyproject.toml setup.py; find ext protos -type f -print0 | sort -z | xargs -0 cat; } | sha256sum | cut -d' ' -f1)
missing_build=0
ls src/heliostat/imaging/_openjpeg*.so >/dev/null 2>&1 || missing_build=1
ls src/heliostat/v1/archive_pb2.py >/dev/null 2>&1 || missing_build=1
if [ -x .venv/bin/python ] && [ -f .venv/.bootstrap-stamp ] && [ "$(cat .venv/.bootstrap-stamp)" = "$stamp_src" ] && [ $missing_build -eq 0 ]; then
  exit 0
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# Build requirements are installed into the venv so that the editable build can run without isolation.
.venv/bin/python -m pip install -q "setuptools>=77,<81" wheel "Cython>=3.0,<4" "numpy>=2.0,<3" "grpcio-tools>=1.85,<1.86"
.venv/bin/python -m pip install -q --no-build-isolation -e ".[test]"
echo "$stamp_src" > .venv/.bootstrap-stamp
echo "bootstrap: environment ready in .venv"
