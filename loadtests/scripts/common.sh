# Sourced by the scripts here: run from the repository root, a no-limits profile, and a readiness wait.
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 1
# The CPU profile with auth off and no limits: what the other features cost is measured against it.
NOLIMITS=$(mktemp --suffix=.yaml)
{ grep -v "^auth_enabled" configs/cpu.yaml
  printf "auth_enabled: false\nrequests_per_minute: null\ntokens_per_minute: null\nmax_concurrent_streams: null\n"
} > "$NOLIMITS"
wait_ready() {  # PORT [PATH]: up to 90 s
  for _ in $(seq 90); do curl -sf "localhost:$1${2:-/readyz}" >/dev/null && return 0; sleep 1; done
  echo "not ready on port $1" >&2; return 1
}
# The engine dtype CodeFace's CPU profile resolves to on this machine (vllm serve gets the same).
DTYPE=$(.venv/bin/python -c "from engine.config import resolve_dtype; print(resolve_dtype('auto'))")
# vllm serve started by hand gets the allocator CodeFace's engine gets by default (cpu_allocator: tcmalloc, preloaded
# where installed): every process of a script inherits it, so both systems run with it (tcmalloc.sh unsets it).
TCMALLOC=$(.venv/bin/python -c "from engine.config import tcmalloc_path; print(tcmalloc_path() or '')")
[ -n "$TCMALLOC" ] && export LD_PRELOAD="$TCMALLOC${LD_PRELOAD:+:$LD_PRELOAD}"
# The engine step CodeFace bounds where fair share is on (auth on, the CPU profile's scheduling_policy: priority) and
# the profile leaves max_num_batched_tokens unset: vllm serve started by hand beside CodeFace with auth on gets the
# same ($FAIR_STEP_ARGS; empty where nothing is derived), so comparisons stay like with like.
FAIR_STEP=$(.venv/bin/python -c "from pathlib import Path; from server.settings import load_settings
print(load_settings(Path('configs/cpu.yaml'), auth_enabled='true').engine_config('model').derived_step_tokens or '')")
FAIR_STEP_ARGS=${FAIR_STEP:+--max-num-batched-tokens $FAIR_STEP}
