#!/usr/bin/env bash
# Issue 26's measurement: vLLM's bench client (Poisson arrivals, random 256-token prompts, 128-token replies,
# --goodput) against vllm serve and CodeFace (auth on, an API key, SLO-aware admission set to the SLO) at the
# rates given (0.7x, 1.5x and 2x the knee that `python -m loadtests capacity` found), fresh servers in alternating
# order for REPEATS rounds. Usage: RATES="0.7 1.5 2.0" SLO_TTFT_MS=3000 SLO_TPOT_MS=150 loadtests/scripts/goodput.sh
# FLOOD_RATE=R: two tenants. A second user (its own key on CodeFace; the same server on vllm serve, which has no
# tenants) floods at R requests/s from FLOOD_LEAD_S seconds before the measured tenant's run until it ends; RATES are
# then the measured (light) tenant's rates, and its goodput is what each run reports (the flood is stopped then).
set -u
source "$(dirname "$0")/common.sh"
REPEATS=${REPEATS:-3}
RATES=${RATES:?RATES: the request rates to measure, e.g. \"0.7 1.5 2.0\"}
SLO_TTFT_MS=${SLO_TTFT_MS:-3000}; SLO_TPOT_MS=${SLO_TPOT_MS:-150}
DURATION_S=${DURATION_S:-120}   # of arrivals per run: the prompt count is rate x this
FLOOD_RATE=${FLOOD_RATE:-}; FLOOD_LEAD_S=${FLOOD_LEAD_S:-15}
# The flood's arrivals last this many times DURATION_S and it is stopped when the measured run ends: the measured
# client starts slowly on cores the flood keeps busy (importing vLLM's bench under that load took minutes), and a
# flood of 3x DURATION_S had ended before it sent its first request.
FLOOD_SPAN=${FLOOD_SPAN:-20}
M=$(.venv/bin/codeface prepare-model 2>/dev/null | tail -1)
OUT=${OUT:-/tmp/bench-goodput}; mkdir -p "$OUT"; rm -f "$OUT"/*.db*
bench() {  # name port rate [key] [seconds of arrivals]
  local prompts; prompts=$(python3 -c "print(max(20, round($3 * ${5:-$DURATION_S})))")
  .venv/bin/python -m loadtests.vllm_bench --backend openai-chat --endpoint /v1/chat/completions \
    --base-url http://127.0.0.1:$2 --model SmolLM2-135M-Instruct --tokenizer "$M" --dataset-name random \
    --random-input-len 256 --random-output-len 128 --ignore-eos --num-prompts "$prompts" --request-rate "$3" \
    --goodput ttft:$SLO_TTFT_MS tpot:$SLO_TPOT_MS --percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 50,90,99 \
    ${4:+--header "Authorization=Bearer $4"} > "$OUT/$1-rate$3.txt" 2>&1
  grep -E "Successful requests|Failed requests|Request goodput|P90 TTFT|P99 TTFT|Median TPOT|P90 TPOT" \
    "$OUT/$1-rate$3.txt" | sed "s/^/$1 rate=$3: /"
}
measured() {  # name port rate [key] [flood key]: the run, under a flood from the other tenant when FLOOD_RATE is set
  [ -z "$FLOOD_RATE" ] && { bench "$1" "$2" "$3" "${4:-}"; return; }
  setsid bash -c "$(declare -f bench); $(declare -p OUT M DURATION_S SLO_TTFT_MS SLO_TPOT_MS); \
    bench $1-flood $2 $FLOOD_RATE '${5:-}' $((DURATION_S * FLOOD_SPAN))" > "$OUT/$1-flood.out" 2>&1 &
  local flood=$!; sleep "$FLOOD_LEAD_S"
  bench "$1" "$2" "$3" "${4:-}"
  kill -- -$flood 2>/dev/null; wait $flood 2>/dev/null
  grep -E "Request goodput" "$OUT/$1-flood-rate$FLOOD_RATE.txt" 2>/dev/null | sed "s/^/$1 flood rate=$FLOOD_RATE: /"
}
run_vllm() {  # round rate
  VLLM_CPU_KVCACHE_SPACE=2 setsid .venv/bin/python -m vllm.entrypoints.openai.api_server --model $M --served-model-name SmolLM2-135M-Instruct --dtype $DTYPE --max-model-len 2048 --enforce-eager --max-num-seqs 256 --enable-prefix-caching --seed 0 --scheduling-policy priority $FAIR_STEP_ARGS --port 8091 > "$OUT/vllm.log" 2>&1 &
  P=$!; wait_ready 8091 /health; measured vllm-$1 8091 $2; kill -- -$P; wait $P 2>/dev/null; sleep 3
}
run_codeface() {  # round rate
  rm -f "$OUT"/cf.db*; export DATABASE_URL=sqlite+aiosqlite:///$OUT/cf.db SECRET_KEY=bench-secret-key-0123456789abcdefghijklmn
  .venv/bin/codeface admin create-user --username bench --password bench-password >/dev/null 2>&1
  KEY=$(.venv/bin/codeface admin create-key --username bench --rpm 10000000 --tpm 10000000000 --streams 100000 2>/dev/null)
  .venv/bin/codeface admin create-user --username flood --password flood-password >/dev/null 2>&1
  FLOOD_KEY=$(.venv/bin/codeface admin create-key --username flood --rpm 10000000 --tpm 10000000000 --streams 100000 2>/dev/null)
  AUTH_ENABLED=true METRICS_PUBLIC=true USER_MAX_CONCURRENT_STREAMS=100000 SLO_TTFT_S=$(python3 -c "print($SLO_TTFT_MS/1000)") \
    SLO_TPOT_S=$(python3 -c "print($SLO_TPOT_MS/1000)") setsid .venv/bin/codeface serve --port 8092 > "$OUT/cf.log" 2>&1 &
  P=$!; wait_ready 8092 /readyz; measured codeface-$1 8092 $2 $KEY $FLOOD_KEY
  curl -s localhost:8092/metrics | grep -E "^codeface_slo_refusals_total" | sed "s/^/codeface-$1 rate=$2: /"
  kill -- -$P; wait $P 2>/dev/null; sleep 3
}
for rate in $RATES; do
  for round in $(seq $REPEATS); do
    if [ $((round % 2)) -eq 1 ]; then run_vllm $round $rate; run_codeface $round $rate; else run_codeface $round $rate; run_vllm $round $rate; fi
  done
done
