#!/usr/bin/env bash
# What tcmalloc (Debian's libtcmalloc-minimal4, preloaded) gives vllm serve and CodeFace at 16 streams: rounds of
# `loadtests compare` (fresh servers, the same engine arguments) with and without it, the order swapped each round.
# The comparison harness gives both systems the same LD_PRELOAD, so each round compares like with like.
# ROUNDS=3 by default; results under /tmp/tcmalloc/<on|off>-<round>/results.json.
set -u
source "$(dirname "$0")/common.sh"
unset LD_PRELOAD  # each mode sets its own, through cpu_allocator and the harness
TCM=$(.venv/bin/python -c "from engine.config import tcmalloc_path; print(tcmalloc_path() or '')")
[ -n "$TCM" ] || { echo "libtcmalloc_minimal.so.4 is not installed (apt-get install libtcmalloc-minimal4)" >&2; exit 1; }
OUT=${OUT:-/tmp/tcmalloc}
for round in $(seq "${ROUNDS:-3}"); do
  modes="on off"; [ $((round % 2)) -eq 0 ] && modes="off on"
  for mode in $modes; do
    allocator=tcmalloc; [ "$mode" = off ] && allocator=system
    echo "== tcmalloc $mode, round $round, $(date +%T)"
    .venv/bin/python -m loadtests compare --config configs/cpu.yaml --systems vllm,codeface \
      --concurrency 16 --num-prompts 48 --input-len 256 --output-len 128 --repeats 1 --warmup 4 \
      --set cpu_allocator=$allocator --out "$OUT/$mode-$round" >/dev/null 2>&1
  done
done
.venv/bin/python - "$OUT" <<'PY'
import json, pathlib, statistics, sys
figures = {}
for path in sorted(pathlib.Path(sys.argv[1]).glob("*/results.json")):
    mode = path.parent.name.split("-")[0]
    for system, runs in json.loads(path.read_text())["runs"].items():
        figures.setdefault((system, mode), []).append(runs[0]["levels"]["16"]["output_throughput"])
for system in ("vllm", "codeface"):
    on, off = figures.get((system, "on"), []), figures.get((system, "off"), [])
    if on and off:
        print(f"{system}: output tok/s with tcmalloc {min(on):.1f}-{max(on):.1f} (median {statistics.median(on):.1f}), "
              f"without {min(off):.1f}-{max(off):.1f} (median {statistics.median(off):.1f}): "
              f"{statistics.median(on) / statistics.median(off):.3f}x median over median")
PY
