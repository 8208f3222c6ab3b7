#!/usr/bin/env bash
# What structured output costs on this engine: 16 streams, 256-token prompts, 128-token replies, with and without
# a json_schema response_format (same server, same workload, alternating order, REPEATS rounds). With ignore_eos
# (the workload's default) every reply is 128 tokens either way: once the schema's object is closed, the grammar
# allows only end-of-sequence tokens, so the constrained run decodes the same number of tokens.
set -u
source "$(dirname "$0")/common.sh"
REPEATS=${REPEATS:-3}
OUT=/tmp/structured; mkdir -p $OUT
SCHEMA='{"response_format": {"type": "json_schema", "json_schema": {"name": "story", "schema": {"type": "object",
  "properties": {"title": {"type": "string"}, "story": {"type": "string"}, "rating": {"type": "integer"}},
  "required": ["title", "story", "rating"]}}}}'
run() {  # name [extra-body]
  .venv/bin/python -m loadtests run --base-url http://127.0.0.1:8094 --concurrency 16 --num-prompts 64 \
    --input-len 256 --output-len 128 --warmup 16 ${2:+--extra-body "$2"} --out $OUT/$1 2>/dev/null | sed -n 3p \
    | sed "s/^/$1 /"
}
setsid .venv/bin/codeface serve --config "$NOLIMITS" --port 8094 > $OUT/cf.log 2>&1 &
P=$!; wait_ready 8094 /readyz
echo "columns: conc ok fail out-tok/s req/s med-TTFT-ms p99-TTFT-ms med-ITL-ms med-TPOT-ms tok/req goodput"
for round in $(seq $REPEATS); do
  if [ $((round % 2)) -eq 1 ]; then run plain-$round; run json-schema-$round "$SCHEMA"
  else run json-schema-$round "$SCHEMA"; run plain-$round; fi
done
kill -- -$P; wait $P 2>/dev/null
