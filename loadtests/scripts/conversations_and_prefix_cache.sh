#!/usr/bin/env bash
# Conversation load check (64 conversations x 4 turns, then an audit of what was stored) and TTFT by turn with
# prefix caching on, then off. Prints the audit JSON, the stored rows by role and status, and two turn tables.
set -u
source "$(dirname "$0")/common.sh"
mkdir -p /tmp/conv; rm -f /tmp/conv/*.db*
export DATABASE_URL=sqlite+aiosqlite:////tmp/conv/cf.db
setsid .venv/bin/codeface serve --config "$NOLIMITS" --port 8051 > /tmp/conv/server.log 2>&1 &
P=$!; wait_ready 8051
.venv/bin/python -m loadtests conversations --base-url http://127.0.0.1:8051 --conversations 64 --turns 4 --max-tokens 32 > /tmp/conv/check.json 2>/tmp/conv/check.err
echo "check rc=$?"; cat /tmp/conv/check.json
sqlite3 /tmp/conv/cf.db "select role, status, count(*), sum(completion_tokens is null), sum(prompt_tokens is null), min(completion_tokens), max(completion_tokens) from messages group by role, status;" 2>/dev/null || .venv/bin/python - <<'PY'
import sqlite3; c=sqlite3.connect('/tmp/conv/cf.db')
print(c.execute("select role, status, count(*), sum(completion_tokens is null), sum(prompt_tokens is null), min(completion_tokens), max(completion_tokens) from messages group by role, status").fetchall())
print(c.execute("select count(*) from conversations").fetchall())
PY
# prefix caching on: multi-turn TTFT by turn
.venv/bin/python -m loadtests run --base-url http://127.0.0.1:8051 --workload multiturn --turns 8 --concurrency 1 --num-prompts 4 --input-len 128 --output-len 64 --warmup 1 --out /tmp/conv/prefix-on 2>/dev/null | tail -12
kill -- -$P; wait $P 2>/dev/null; sleep 3
setsid .venv/bin/codeface serve --config "$NOLIMITS" --port 8052 --set enable_prefix_caching=false > /tmp/conv/server-off.log 2>&1 &
P=$!; wait_ready 8052
.venv/bin/python -m loadtests run --base-url http://127.0.0.1:8052 --workload multiturn --turns 8 --concurrency 1 --num-prompts 4 --input-len 128 --output-len 64 --warmup 1 --out /tmp/conv/prefix-off 2>/dev/null | tail -12
kill -- -$P; wait $P 2>/dev/null
