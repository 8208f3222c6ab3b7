#!/usr/bin/env bash
# CPU seconds used by each server's frontend process (not the engine core) during the same c=64 load.
set -u
source "$(dirname "$0")/common.sh"
M=$(.venv/bin/codeface prepare-model 2>/dev/null | tail -1)
cpu() { awk '{print $14+$15}' /proc/$1/stat; }   # utime+stime in clock ticks, all threads
measure() {  # name port pid [key]
  local before after
  before=$(cpu $3)
  .venv/bin/python -m loadtests run --base-url http://127.0.0.1:$2 ${4:+--api-key $4} --concurrency 64 --num-prompts 128 \
     --input-len 256 --output-len 128 --warmup 4 --out /tmp/cpuuse/$1 2>/dev/null | sed -n 3p | sed "s/^/$1 /"
  after=$(cpu $3)
  echo "$1 frontend CPU: $(( (after - before) )) ticks ($(getconf CLK_TCK)/s)"
}
mkdir -p /tmp/cpuuse; rm -f /tmp/cpuuse/*.db*
VLLM_CPU_KVCACHE_SPACE=2 setsid .venv/bin/python -m vllm.entrypoints.openai.api_server --model $M --served-model-name SmolLM2-135M-Instruct --dtype $DTYPE --max-model-len 2048 --enforce-eager --max-num-seqs 256 --enable-prefix-caching --seed 0 $FAIR_STEP_ARGS --port 8071 > /tmp/cpuuse/vllm.log 2>&1 &
P=$!; wait_ready 8071 /health; measure vllm 8071 $P; kill -- -$P; wait $P 2>/dev/null; sleep 3
export DATABASE_URL=sqlite+aiosqlite:////tmp/cpuuse/cf.db SECRET_KEY=cpuuse-secret-key-0123456789abcdefghijkl
.venv/bin/codeface admin create-user --username bench --password bench-password >/dev/null 2>&1
KEY=$(.venv/bin/codeface admin create-key --username bench --rpm 10000000 --tpm 10000000000 --streams 100000 2>/dev/null)
AUTH_ENABLED=true setsid .venv/bin/codeface serve --port 8072 > /tmp/cpuuse/cf.log 2>&1 &
P=$!; wait_ready 8072; measure codeface 8072 $(pgrep -f "codeface serve --port 8072" | head -1) $KEY; kill -- -$P; wait $P 2>/dev/null
