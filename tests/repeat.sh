#!/usr/bin/env bash
# Runs the suite's order up to one test, N times, and says how each run ended: a flaky test is proven fixed by
# repeating it under the conditions that the tests before it leave (here: the Postgres outages of
# tests/faults/test_services_down_load_and_drain.py, with the servers of later modules starting meanwhile, as in CI).
# usage: tests/repeat.sh N TEST_NAME [pytest arguments that select the run, in CI order]
# e.g.:  tests/repeat.sh 10 test_redis_restart_mid_stream_leaves_no_slot_behind \
#          tests/faults/test_services_down_load_and_drain.py tests/faults/test_sigkill_and_engine_kill.py \
#          tests/test_fairness.py tests/test_scale_out.py \
#          -k "outage or redis_restart or test_sigkill_and_engine_kill or test_scale_out or test_fairness"
# (the later modules are selected so that their servers are planned and launched early, as in a full run; the
# session stops after TEST_NAME). Run nothing else meanwhile: two such sessions exceed a 24 GiB machine.
set -u
cd "$(dirname "$0")/.."
count=$1; name=$2; shift 2
export CI=true STOP_AFTER=$name PYTHONPATH=tests${PYTHONPATH:+:$PYTHONPATH}
for i in $(seq "$count"); do
  log=$(mktemp); began=$(date +%s)
  "${PYTHON:-.venv/bin/python}" -m pytest -v -p no:cacheprovider -p stop_after "$@" >"$log" 2>&1
  outcome=$(grep -oE "::$name (PASSED|FAILED|ERROR)" "$log" | head -1 | awk '{print $2}')
  echo "run $i: ${outcome:-not reached} in $(( $(date +%s) - began )) s; log $log"
done
