#!/usr/bin/env bash
# Installs the real perf_analyzer (the binary inside the tritonclient 2.48.0 wheel; the PyPI
# `perf-analyzer` 2.60 needs glibc 2.38) into .tools/perf_analyzer, outside the project virtualenv so
# the venv keeps a current tritonclient. Idempotent; no stdin; runnable as root on Debian 12.
#   .tools/perf_analyzer/bin/perf_analyzer          the binary
#   .tools/perf_analyzer/nvidia/cuda_runtime/lib    libcudart.so.12 it links against (no GPU needed)
#   apt: libb64-0d                                   libb64.so.0d it links against
# perf_analyzer_configs/sweep.sh sets LD_LIBRARY_PATH for it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-${VENV:-$ROOT/.venv}/bin/python}"   # scripts/setup.sh passes VENV
TRITONCLIENT_VERSION="2.48.0"
CUDART_VERSION="12.4.127"
TARGET="$ROOT/.tools/perf_analyzer"
BIN="$TARGET/bin/perf_analyzer"
STAMP="$TARGET/.installed-tritonclient-$TRITONCLIENT_VERSION-cudart-$CUDART_VERSION"

if ! dpkg-query -W -f='${Status}' libb64-0d 2>/dev/null | grep -q "install ok installed"; then
  echo "install_perf_analyzer: installing libb64-0d (apt)"
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""; [[ "$(id -u)" != 0 ]] && SUDO="sudo -n"
  # apt-get update only when the package index does not know the package yet.
  if ! apt-cache show libb64-0d >/dev/null 2>&1; then $SUDO apt-get update -qq; fi
  $SUDO apt-get install -y -qq --no-install-recommends libb64-0d >/dev/null
fi

if [[ ! -f "$STAMP" || ! -x "$BIN" ]]; then
  echo "install_perf_analyzer: installing tritonclient==$TRITONCLIENT_VERSION + nvidia-cuda-runtime-cu12==$CUDART_VERSION into $TARGET"
  rm -rf "$TARGET"
  "$PYTHON" -m pip install --quiet --no-input --disable-pip-version-check --no-deps --target "$TARGET" \
    "tritonclient==$TRITONCLIENT_VERSION" "nvidia-cuda-runtime-cu12==$CUDART_VERSION"
  chmod +x "$BIN"
  touch "$STAMP"
fi

if ! LD_LIBRARY_PATH="$TARGET/nvidia/cuda_runtime/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$BIN" --version >/dev/null 2>&1; then
  echo "install_perf_analyzer: $BIN does not start; run it by hand to see the missing library" >&2
  exit 1
fi
echo "install_perf_analyzer: ok ($BIN)"
