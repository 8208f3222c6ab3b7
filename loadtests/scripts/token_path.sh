#!/usr/bin/env bash
# The token path (issue 28): API-process and engine-core CPU per 1,000 output tokens, output tok/s and median TTFT,
# vllm serve against CodeFace with everything on (auth and an API key, limits in Redis, Postgres, metrics, OTLP
# traces to a local sink; the key's and its user's budgets huge but checked), vLLM's bench client on the chat
# endpoint, same engine arguments, a fresh server per (system, round), the systems in alternating order. Each
# server serves the levels in turn (16, 64, 256 streams); each run prints one line per level.
#   SYSTEMS="vllm cf=after=$PWD"  systems to run: vllm, and cf=LABEL=TREE (a CodeFace source tree, run as LABEL)
#   LEVELS="16 64 256" REPEATS=3 CF_ENV="..." (extra settings for CodeFace, e.g. API_PROCESSES=2 with
#                                 REPLY_STREAMS_URL=redis://127.0.0.1:6379/0, which several processes need)
#   SERVE_ARGS="..."             extra arguments for vllm serve (e.g. --api-server-count 2 beside API_PROCESSES=2)
# CPU by role: the engine is every process of the server's tree titled VLLM::EngineCore or VLLM::Worker; the API the rest
# (the server's first process, and its API processes where there are several), so that one API process and N
# are counted alike on both systems.
#   IDLE_S=60                    first, the API side's CPU while the server idles that long (ms per second): what
#                                 runs whatever the load (reconcilers, samplers, exporters), weighed per token by tok/s
#   LOCK=/tmp/cf-engine.lock     each server run holds it (a few minutes), so other engine users interleave
set -u
source "$(dirname "$0")/common.sh"
PY=${PY:-$PWD/.venv/bin/python}
LEVELS=${LEVELS:-16 64 256}
REPEATS=${REPEATS:-3}
SYSTEMS=${SYSTEMS:-vllm cf=after=$PWD}
LOCK=${LOCK:-/tmp/cf-engine.lock}
OUT=${OUT:-/tmp/token-path}; mkdir -p $OUT
DB=cf_token_path
M=$($PY -m server.cli prepare-model 2>/dev/null | tail -1)
ENGINE_ARGS="--dtype $DTYPE --max-model-len 2048 --enforce-eager --max-num-seqs 256 --enable-prefix-caching --seed 0 --scheduling-policy priority $FAIR_STEP_ARGS"
prompts() { case $1 in 16) echo 48 ;; 64) echo 128 ;; *) echo $(( $1 * 1 )) ;; esac; }   # tens of seconds each
ticks() { local t=0 p; for p in "$@"; do [ -r /proc/$p/stat ] && t=$(( t + $(awk '{print $14+$15}' /proc/$p/stat) )); done; echo $t; }
descendants() { local c; for c in $(pgrep -P "$1"); do echo "$c"; descendants "$c"; done; }
# The engine: vLLM's engine core and its workers, by the titles vLLM sets (/proc/PID/comm keeps 15 characters).
is_engine() { case $(cat /proc/$1/comm 2>/dev/null) in VLLM::EngineCor|VLLM::Worker*) return 0 ;; esac; return 1; }
engine_core() { local p; for p in "$@"; do is_engine $p && echo $p; done; }
api_side() { local p; for p in "$@"; do is_engine $p || echo $p; done; }

# OTLP/HTTP sink: answers every export with 200, so the server's BatchSpanProcessor does its full work.
$PY -c '
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0))); self.send_response(200)
        self.send_header("content-type", "application/x-protobuf"); self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", 4318), H).serve_forever()' &
SINK=$!; trap 'kill $SINK 2>/dev/null' EXIT

bench() {  # name port level api_pid [key]
  local n api0 eng0 api1 eng1 tree engines apis out=$OUT/$1-$3.txt
  n=${PROMPTS:-$(prompts $3)}; tree="$4 $(descendants $4)"
  engines=$(engine_core $tree); apis=$(api_side $tree)
  [ -n "$engines" ] || { echo "no engine process under $4" >&2; exit 1; }
  api0=$(ticks $apis); eng0=$(ticks $engines)
  OPENAI_API_KEY=${5:-} $PY -m loadtests.vllm_bench --backend openai-chat --endpoint /v1/chat/completions \
    --base-url http://127.0.0.1:$2 --model SmolLM2-135M-Instruct --tokenizer "$M" --dataset-name random \
    --random-input-len 256 --random-output-len 128 --num-prompts $n --max-concurrency $3 --ignore-eos \
    --seed $3 --percentile-metrics ttft,tpot,itl > $out 2>&1
  api1=$(ticks $apis); eng1=$(ticks $engines)
  local toks tps ttft fail
  toks=$(awk -F: '/Total generated tokens/{gsub(/ /,"",$2); print $2}' $out)
  tps=$(awk -F: '/Output token throughput/{gsub(/ /,"",$2); print $2}' $out)
  ttft=$(awk -F: '/Median TTFT/{gsub(/ /,"",$2); print $2}' $out)
  fail=$(awk -F: '/Failed requests/{gsub(/ /,"",$2); print $2}' $out)
  awk -v s="$1" -v c="$3" -v a=$((api1 - api0)) -v e=$((eng1 - eng0)) -v t="${toks:-0}" -v tps="$tps" \
      -v ttft="$ttft" -v f="${fail:-?}" -v hz="$(getconf CLK_TCK)" 'BEGIN {
    t = t > 0 ? t : 1
    printf "%s c=%s api_ms_per_1k=%.1f engine_ms_per_1k=%.1f tok_s=%s median_ttft_ms=%s tokens=%d failed=%s\n",
      s, c, a * 1000 / hz * 1000 / t, e * 1000 / hz * 1000 / t, tps, ttft, t, f }'
}

idle() {  # name api_pid: the API side's CPU over IDLE_S seconds of no requests, after 10 s to settle
  [ -n "${IDLE_S:-}" ] || return 0
  local tree apis a0 a1
  sleep 10; tree="$2 $(descendants $2)"; apis=$(api_side $tree)
  a0=$(ticks $apis); sleep $IDLE_S; a1=$(ticks $apis)
  awk -v s="$1" -v a=$((a1 - a0)) -v d=$IDLE_S -v hz="$(getconf CLK_TCK)" \
    'BEGIN { printf "%s idle api_ms_per_s=%.2f over %d s\n", s, a * 1000 / hz / d, d }'
}

run_vllm() {  # round
  VLLM_CPU_KVCACHE_SPACE=2 setsid $PY -m vllm.entrypoints.openai.api_server --model $M \
    --served-model-name SmolLM2-135M-Instruct $ENGINE_ARGS ${SERVE_ARGS:-} --port 8191 > $OUT/vllm-$1.log 2>&1 &
  local P=$!; wait_ready 8191 /health
  idle vllm-r$1 $P
  for c in $LEVELS; do bench vllm-r$1 8191 $c $P; done
  kill -- -$P; wait $P 2>/dev/null; sleep 3
}

run_codeface() {  # label tree round
  local tree=$2 P key
  psql -q -h 127.0.0.1 -U postgres -c "drop database if exists $DB" -c "create database $DB" >/dev/null
  redis-cli -n 0 --scan --pattern 'LIMITS*' | xargs -r redis-cli -n 0 del >/dev/null
  (
    cd "$tree" || exit 1
    export PYTHONPATH=$tree DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/$DB \
      SECRET_KEY=token-path-secret-key-0123456789abcdefgh AUTH_ENABLED=true \
      RATE_LIMIT_STORAGE=async+redis://127.0.0.1:6379 TRACE_EXPORTER=otlp-http \
      TRACE_ENDPOINT=http://127.0.0.1:4318/v1/traces LOG_FORMAT=json \
      USER_REQUESTS_PER_MINUTE=10000000 USER_TOKENS_PER_MINUTE=2000000000 USER_MAX_CONCURRENT_STREAMS=100000
    [ -n "${CF_ENV:-}" ] && export ${CF_ENV?}
    $PY -m server.cli migrate >/dev/null 2>&1
    $PY -m server.cli admin create-user --username bench --password bench-password >/dev/null 2>&1
    $PY -m server.cli admin create-key --username bench --rpm 10000000 --tpm 2000000000 --streams 100000 \
      2>/dev/null > $OUT/key
    exec setsid $PY -m server.cli serve --port 8192 > $OUT/cf-$1-$3.log 2>&1
  ) &
  P=$!; wait_ready 8192 /readyz; key=$(tail -1 $OUT/key)
  # The subshell execs the server: $P is its first process; bench splits its tree into engine core and API.
  idle "$1-r$3" $P
  for c in $LEVELS; do bench "$1-r$3" 8192 $c $P "$key"; done
  kill -- -$P 2>/dev/null || kill $P; wait $P 2>/dev/null; sleep 3
}

run() {  # system round
  case $1 in
    vllm) flock $LOCK bash -c "$(declare -f); $(declare -p PY LEVELS OUT M ENGINE_ARGS DTYPE); PROMPTS=${PROMPTS:-}; IDLE_S=${IDLE_S:-}; SERVE_ARGS='${SERVE_ARGS:-}'; run_vllm $2" ;;
    cf=*) local spec=${1#cf=}
          flock $LOCK bash -c "$(declare -f); $(declare -p PY LEVELS OUT M DB DTYPE); PROMPTS=${PROMPTS:-}; IDLE_S=${IDLE_S:-}; CF_ENV='${CF_ENV:-}'; run_codeface ${spec%%=*} ${spec#*=} $2" ;;
  esac
}

read -ra systems <<< "$SYSTEMS"
for round in $(seq $REPEATS); do
  order=("${systems[@]}")
  [ $((round % 2)) -eq 0 ] && order=($(printf '%s\n' "${systems[@]}" | tac))
  for s in "${order[@]}"; do run "$s" $round; done
done
