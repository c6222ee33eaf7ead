#!/usr/bin/env bash
# Concurrency sweep with the real perf_analyzer against a running moe_llm server (gRPC streaming).
#
#   perf_analyzer_configs/sweep.sh [-u localhost:8001] [-i short|long|FILE.json] [-c "1 2 4 8"] [-n 4] [-o DIR]
#
#   -u  gRPC address of the server (start one with `python -m backend.serve` or `make serve`)
#   -i  input data: short_prompts.json, long_prompts.json, or any perf_analyzer --input-data file
#   -c  concurrency levels; each runs -n x concurrency requests (--request-count)
#   -o  output folder (default bench_out/sweep-<input>-<time>): per level the perf_analyzer CSV
#       (c<N>.csv) and profile export with every response timestamp (c<N>.json), plus summary.md
#
# Installs perf_analyzer first if missing (scripts/install_perf_analyzer.sh, idempotent).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
URL="localhost:8001"
INPUT="short"
CONCURRENCY="1 2 4 8"
PER_LEVEL=4
OUT=""
while getopts "u:i:c:n:o:h" opt; do
  case "$opt" in
    u) URL="$OPTARG" ;;
    i) INPUT="$OPTARG" ;;
    c) CONCURRENCY="$OPTARG" ;;
    n) PER_LEVEL="$OPTARG" ;;
    o) OUT="$OPTARG" ;;
    *) sed -n '2,13p' "$0"; exit 2 ;;
  esac
done
case "$INPUT" in
  short|long) INPUT_FILE="$ROOT/perf_analyzer_configs/${INPUT}_prompts.json" ;;
  *) INPUT_FILE="$INPUT" ;;
esac
[[ -f "$INPUT_FILE" ]] || { echo "sweep: no input data file $INPUT_FILE" >&2; exit 2; }
NAME="$(basename "$INPUT_FILE" .json)"
OUT="${OUT:-$ROOT/bench_out/sweep-$NAME-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"

"$ROOT/scripts/install_perf_analyzer.sh" >/dev/null
PA="$ROOT/.tools/perf_analyzer/bin/perf_analyzer"
export LD_LIBRARY_PATH="$ROOT/.tools/perf_analyzer/nvidia/cuda_runtime/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

for c in $CONCURRENCY; do
  echo "sweep: concurrency $c ($((c * PER_LEVEL)) requests, $NAME) -> $OUT/c$c.*" >&2
  "$PA" -m moe_llm -u "$URL" -i grpc --streaming --async --input-data "$INPUT_FILE" \
    --concurrency-range "$c:$c" --request-count "$((c * PER_LEVEL))" \
    -f "$OUT/c$c.csv" --profile-export-file "$OUT/c$c.json" > "$OUT/c$c.log" 2>&1 \
    || { echo "sweep: perf_analyzer failed at concurrency $c:" >&2; tail -20 "$OUT/c$c.log" >&2; exit 1; }
done

PYTHON="${PYTHON:-${VENV:-$ROOT/.venv}/bin/python}"
(cd "$ROOT" && "$PYTHON" -m perf_analyzer_configs.summarize "$OUT"/c*.json) | tee "$OUT/summary.md"
echo "sweep: results in $OUT" >&2
