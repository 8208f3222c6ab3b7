#!/usr/bin/env bash
# Per-request overhead at concurrency 1: 1-token replies to 16-token prompts.
set -u
source "$(dirname "$0")/common.sh"
M=$(.venv/bin/codeface prepare-model 2>/dev/null | tail -1)
run() {  # name port key
  .venv/bin/python -m loadtests run --base-url http://127.0.0.1:$2 ${3:+--api-key $3} --concurrency 1 --num-prompts 200 \
    --input-len 16 --output-len 1 --warmup 10 --out /tmp/overhead/$1 2>/dev/null | sed -n 3p | sed "s/^/$1 /"
}
mkdir -p /tmp/overhead
for round in 1 2; do
# vllm serve
VLLM_CPU_KVCACHE_SPACE=2 setsid .venv/bin/python -m vllm.entrypoints.openai.api_server --model $M --served-model-name SmolLM2-135M-Instruct --dtype $DTYPE --max-model-len 2048 --enforce-eager --max-num-seqs 256 --enable-prefix-caching --seed 0 $FAIR_STEP_ARGS --port 8041 > /tmp/overhead/vllm.log 2>&1 &
P=$!; wait_ready 8041 /health; run vllm-$round 8041; kill -- -$P; wait $P 2>/dev/null; sleep 3
# codeface, auth + rate limits on
rm -f /tmp/overhead/cf.db*; export DATABASE_URL=sqlite+aiosqlite:////tmp/overhead/cf.db SECRET_KEY=overhead-secret-key-0123456789abcdefghij
.venv/bin/codeface admin create-user --username bench --password bench-password >/dev/null 2>&1
KEY=$(.venv/bin/codeface admin create-key --username bench --rpm 10000000 --tpm 10000000000 --streams 100000 2>/dev/null)
AUTH_ENABLED=true setsid .venv/bin/codeface serve --port 8042 > /tmp/overhead/cf-on.log 2>&1 &
P=$!; wait_ready 8042 /readyz; run codeface-auth-on-$round 8042 $KEY; kill -- -$P; wait $P 2>/dev/null; sleep 3
# codeface, auth off and no limits
# (the engine step CodeFace bounds with auth on, so that only auth and limits differ)
setsid .venv/bin/codeface serve --config "$NOLIMITS" --port 8043 ${FAIR_STEP:+--set max_num_batched_tokens=$FAIR_STEP} > /tmp/overhead/cf-off.log 2>&1 &
P=$!; wait_ready 8043 /readyz; run codeface-auth-off-$round 8043; kill -- -$P; wait $P 2>/dev/null; sleep 3
done
