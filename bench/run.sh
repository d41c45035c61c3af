#!/usr/bin/env bash
# The standard benchmark set on this machine: starts its own redis-server and
# two confab nodes (release builds, shared SQLite or CONFAB_BENCH_POSTGRES_URL),
# runs every scenario, prints the table, and stops everything it started.
#
#   bash bench/run.sh            # the standard set
#   SCALE=0.1 bash bench/run.sh  # a quick smoke run with fewer sockets
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${SCALE:-1}
scale() { python3 -c "print(max(1, int($1 * $SCALE)))"; }

cargo build --release -q -p confab --bin confab
cargo build --release -q -p confab-bench
# BIN=path runs another build of the node (for before/after comparisons);
# it must know `serve --port-file`.
BIN=${BIN:-target/release/confab}
BENCH=target/release/confab-bench
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"

WORK=$(mktemp -d /tmp/confab-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
DB_URL=${CONFAB_BENCH_POSTGRES_URL:-"sqlite://$WORK/bench.db?mode=rwc"}

declare -A NODE_PID NODE_URL
# A node listens on a port the system picks and writes the address it bound
# to its port file: no port is guessed free and then taken by someone else.
start_node() { # name
  local port_file="$WORK/$1.port"
  rm -f "$port_file"
  CONFAB_SERVER__LISTEN=127.0.0.1:0 CONFAB_SERVER__NODE_ID=$1 \
  CONFAB_SERVER__DRAIN_SECS=2 \
  CONFAB_DATABASE__URL="$DB_URL" CONFAB_BUS__REDIS_URL=redis://127.0.0.1:$REDIS_PORT \
  CONFAB_LIMITS__MAX_CONNECTIONS_PER_USER=1000000 \
  CONFAB_LIMITS__SEND_RATE_PER_SEC=1000000 CONFAB_LIMITS__SEND_BURST=1000000 \
  CONFAB_LIMITS__FRAME_RATE_PER_SEC=1000000 CONFAB_LIMITS__FRAME_BURST=1000000 \
  CONFAB_LIMITS__MAX_MESSAGE_CHARS=20000 \
  CONFAB_LIMITS__MAX_PENDING_CONNECTIONS=1000000 CONFAB_LIMITS__MAX_PENDING_CONNECTIONS_PER_IP=0 \
  CONFAB_ASSISTANTS__DEFAULT__ECHO_DELAY_MS=1 RUST_LOG=warn \
    "$BIN" serve --port-file "$port_file" >"$WORK/$1.log" 2>&1 &
  NODE_PID[$1]=$!
  PIDS+=($!)
  for _ in $(seq 1 200); do
    if [ -s "$port_file" ]; then
      NODE_URL[$1]=http://$(cat "$port_file")
      curl -sf "${NODE_URL[$1]}/ready" >/dev/null 2>&1 && return 0
    fi
    kill -0 "${NODE_PID[$1]}" 2>/dev/null || break
    sleep 0.05
  done
  echo "node $1 did not become ready" >&2; cat "$WORK/$1.log" >&2; exit 1
}
start_node a
start_node b
both=(--node "${NODE_URL[a]}" --node "${NODE_URL[b]}" --node-pid "${NODE_PID[a]}" --node-pid "${NODE_PID[b]}")

# ONLY="idle storm" runs just those scenarios.
want() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; database: ${DB_URL%%:*}; node pids a=${NODE_PID[a]} b=${NODE_PID[b]}"
# This machine caps every process at 20000 file descriptors (hard limit):
# the idle sockets are held by two helper processes, 10k on each node; the
# storm puts all its sockets on one node, so it stays at 18k.
if want idle; then $BENCH "${both[@]}" idle --sockets "$(scale 20000)" --procs 2; fi
if want fanout; then
  $BENCH "${both[@]}" fanout --receivers 200 --rate 250 --seconds 5    # 50k deliveries/s
  $BENCH "${both[@]}" fanout --receivers 200 --rate 500 --seconds 5    # 100k deliveries/s
  $BENCH "${both[@]}" fanout --receivers 200 --rate 2200 --seconds 5   # 440k deliveries/s offered
fi
# The kernel's cost of a write here, no node involved: one frame per write
# (as at 50k/s, where a socket's frames are 4 ms apart) and four.
if want floor; then
  $BENCH "${both[@]}" floor --sockets 100 --rate 250 --per-write 1
  $BENCH "${both[@]}" floor --sockets 100 --rate 250 --per-write 4
fi
# 1000 conversations of 4: 8k sends/s offered, then 12k (the ceiling, for
# the 10k target on Postgres).
if want rooms; then
  $BENCH "${both[@]}" rooms --rooms "$(scale 1000)" --members 4 --rate 2 --seconds 5
  $BENCH "${both[@]}" rooms --rooms "$(scale 1000)" --members 4 --rate 3 --seconds 5
fi
# One hot conversation: 10 members sending 600/s each, 6000 sends/s offered.
if want hot; then $BENCH "${both[@]}" rooms --rooms 1 --members 10 --rate 600 --seconds 5; fi
if want stream; then $BENCH "${both[@]}" stream --watchers 100 --tokens 1000; fi
# Last: the storms stop node a, drained (SIGTERM, spread over 2 s), then,
# started again, killed (SIGKILL).
if want storm; then
  $BENCH "${both[@]}" storm --sockets "$(scale 18000)"
  wait "${NODE_PID[a]}" || true
  start_node a
  both=(--node "${NODE_URL[a]}" --node "${NODE_URL[b]}" --node-pid "${NODE_PID[a]}" --node-pid "${NODE_PID[b]}")
  $BENCH "${both[@]}" storm --sockets "$(scale 18000)" --kill
fi
echo "== done"
