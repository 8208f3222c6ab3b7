#!/usr/bin/env bash
# Tracing overhead: 16 concurrent streams against CodeFace with trace_exporter none vs console, three rounds.
set -u
source "$(dirname "$0")/common.sh"
mkdir -p /tmp/obs; rm -f /tmp/obs/*.db*
export DATABASE_URL=sqlite+aiosqlite:////tmp/obs/cf.db
for round in 1 2 3; do
for mode in none console; do
  setsid .venv/bin/codeface serve --config "$NOLIMITS" --port 8061 --set trace_exporter=$mode > /tmp/obs/server-$mode.log 2>&1 &
  P=$!; wait_ready 8061
  .venv/bin/python -m loadtests run --base-url http://127.0.0.1:8061 --concurrency 16 --num-prompts 48 --input-len 256 --output-len 128 --warmup 4 --out /tmp/obs/$mode-$round 2>/dev/null | sed -n 3p | sed "s/^/$mode-$round /"
  kill -- -$P; wait $P 2>/dev/null; sleep 3
done
done
