#!/usr/bin/env bash
# vLLM's own benchmark client (vllm bench serve --backend vllm --endpoint /v1/completions) against vllm serve and
# CodeFace (auth on, an API key, limits checked, metrics on), same engine arguments, 16 streams, 256-token prompts,
# 128-token replies, alternating order for REPEATS rounds. Prints each run's summary lines.
set -u
source "$(dirname "$0")/common.sh"
REPEATS=${REPEATS:-3}
M=$(.venv/bin/codeface prepare-model 2>/dev/null | tail -1)
OUT=/tmp/bench-completions; mkdir -p $OUT; rm -f $OUT/*.db*
bench() {  # name port [key]
  .venv/bin/python -m loadtests.vllm_bench --backend vllm --endpoint /v1/completions --base-url http://127.0.0.1:$2 \
    --model SmolLM2-135M-Instruct --tokenizer "$M" --dataset-name random --random-input-len 256 --random-output-len 128 \
    --num-prompts 64 --max-concurrency 16 --ignore-eos --percentile-metrics ttft,tpot,itl,e2el \
    ${3:+--header "Authorization=Bearer $3"} > $OUT/$1.txt 2>&1
  grep -E "Successful requests|Failed requests|Output token throughput|Median TTFT|Median TPOT|Median ITL" $OUT/$1.txt | sed "s/^/$1: /"
}
run_vllm() {
  VLLM_CPU_KVCACHE_SPACE=2 setsid .venv/bin/python -m vllm.entrypoints.openai.api_server --model $M --served-model-name SmolLM2-135M-Instruct --dtype $DTYPE --max-model-len 2048 --enforce-eager --max-num-seqs 256 --enable-prefix-caching --seed 0 --scheduling-policy priority $FAIR_STEP_ARGS --port 8091 > $OUT/vllm.log 2>&1 &
  P=$!; wait_ready 8091 /health; bench vllm-$1 8091; kill -- -$P; wait $P 2>/dev/null; sleep 3
}
run_codeface() {
  rm -f $OUT/cf.db*; export DATABASE_URL=sqlite+aiosqlite:///$OUT/cf.db SECRET_KEY=bench-secret-key-0123456789abcdefghijklmn
  .venv/bin/codeface admin create-user --username bench --password bench-password >/dev/null 2>&1
  KEY=$(.venv/bin/codeface admin create-key --username bench --rpm 10000000 --tpm 10000000000 --streams 100000 2>/dev/null)
  AUTH_ENABLED=true setsid .venv/bin/codeface serve --port 8092 > $OUT/cf.log 2>&1 &
  P=$!; wait_ready 8092 /readyz; bench codeface-$1 8092 $KEY; kill -- -$P; wait $P 2>/dev/null; sleep 3
}
for round in $(seq $REPEATS); do
  if [ $((round % 2)) -eq 1 ]; then run_vllm $round; run_codeface $round; else run_codeface $round; run_vllm $round; fi
done
