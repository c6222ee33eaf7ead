#!/usr/bin/env bash
# Installs a real tritonserver (2.51.0, from the nvidia-pytriton 0.7.0 wheel) and its Python backend
# into .tools/, outside the project virtualenv. Idempotent; no stdin; runnable as root on Debian 12.
#   .tools/pytriton/                      the wheel (--no-deps: its deps would pin numpy<2 / tritonclient~=2.50)
#   .tools/backends/python/               the Python backend + the CPython 3.11 stub (--backend-directory .tools/backends)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-${VENV:-$ROOT/.venv}/bin/python}"   # scripts/setup.sh passes VENV
PYTRITON_VERSION="0.7.0"
TOOLS="$ROOT/.tools"
TARGET="$TOOLS/pytriton"
BACKENDS="$TOOLS/backends"
BIN="$TARGET/pytriton/tritonserver/bin/tritonserver"
STAMP="$TARGET/.installed-nvidia-pytriton-$PYTRITON_VERSION"

if [[ ! -f "$STAMP" || ! -x "$BIN" ]]; then
  echo "install_tritonserver: installing nvidia-pytriton==$PYTRITON_VERSION into $TARGET"
  rm -rf "$TARGET"
  "$PYTHON" -m pip install --quiet --no-input --disable-pip-version-check --no-deps \
    --target "$TARGET" "nvidia-pytriton==$PYTRITON_VERSION"
  touch "$STAMP"
fi

STUB_SRC="$TARGET/pytriton/tritonserver/python_backend_stubs/3.11/triton_python_backend_stub"
if [[ ! -x "$BACKENDS/python/triton_python_backend_stub" || "$STAMP" -nt "$BACKENDS/python/triton_python_backend_stub" ]]; then
  rm -rf "$BACKENDS/python"
  mkdir -p "$BACKENDS"
  cp -r "$TARGET/pytriton/tritonserver/backends/python" "$BACKENDS/python"
  cp "$STUB_SRC" "$BACKENDS/python/triton_python_backend_stub"
  chmod +x "$BACKENDS/python/triton_python_backend_stub"
fi

# The stub embeds libpython: it must be the venv's own build (see backend/serve.py for the env it runs in).
LIBDIR="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')"
# `--help` exits 1 by design: check that it printed its usage (i.e. every shared library was found).
USAGE="$(LD_LIBRARY_PATH="$LIBDIR:$TARGET/nvidia_pytriton.libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$BIN" --help 2>&1 || true)"
if [[ "$USAGE" != *"--model-repository"* ]]; then
  echo "install_tritonserver: $BIN does not start; run it by hand to see the missing library" >&2
  exit 1
fi
echo "install_tritonserver: ok ($BIN, backends in $BACKENDS)"
