#!/usr/bin/env bash
# The standard benchmark set on this machine: starts its own redis-server and
# two confab nodes (release builds, shared SQLite or CONFAB_BENCH_POSTGRES_URL),
# runs every scenario, prints the table, and stops everything it started.
#
#   bash bench/run.sh            # the standard set
#   SCALE=0.1 bash bench/run.sh  # a quick smoke run with fewer sockets
#   ONLY="idle storm" bash bench/run.sh   # some scenarios only
#   ONLY=log bash bench/run.sh   # the conversation log: sends with edits and reactions mixed in, seqs checked on every socket
#   ONLY=presence bash bench/run.sh  # a presence storm: 10k users move from node a to node b at once
#   ONLY=stream bash bench/run.sh  # assistant answers: 100 watchers, tabs joining mid-answer, the queue
#   BIN=path bash bench/run.sh   # another build of the node (before/after)
#   NO_BUILD=1 bash bench/run.sh # no cargo build: the binaries already in $CARGO_TARGET_DIR (or target)
#
# In the standard set, RATES (default "250 500 2200"), SECONDS_PER_RUN (5)
# and RECEIVERS (200) set the fan-out runs, and LOG_RATES (default
# "1000 2000", operations/s) the log runs:
#
#   ONLY=fanout RATES="250 1000" SECONDS_PER_RUN=5 BIN=path bash bench/run.sh
#
# The stream scenario runs three benches: 100 watchers of one fast echo
# answer (1000 tokens); the catch-up: CATCHUP_TABS (100) tabs, spread over
# both nodes, join a conversation at once while an answer of CATCHUP_WORDS
# (1000) words is being written by the echo assistant `catchup`, which
# waits CATCHUP_DELAY_MS (5) per word, CATCHUP_JOIN_AFTER_MS (2500) after
# it started, then as many again at rest; and the queue: QUEUE_USERS (20)
# users, half on each node, each sending QUEUE_REQUESTS (3) requests at once
# in each of QUEUE_CONVERSATIONS (2) conversations, answers of QUEUE_WORDS
# (20) words at QUEUE_DELAY_MS (5) per word, to the assistant `limited`
# (max_concurrent QUEUE_MAX_CONCURRENT, default 4), then the same to
# `unlimited` (no limit). These variables are read when the nodes start:
# the nodes get both assistants, and streaming.max_streams_per_user 1000
# (CONFAB_STREAMING__MAX_STREAMS_PER_USER) so one user's burst is not
# refused:
#
#   ONLY=stream QUEUE_MAX_CONCURRENT=8 QUEUE_USERS=50 bash bench/run.sh
#
# The fan-out runs on each transport of TRANSPORTS (default "websocket
# http": the receivers on sockets, then on the HTTP transport's event
# streams), alternating at each rate, RUNS times (default 1), and ends
# with a table per rate: websocket | http | http/ws (medians):
#
#   ONLY=fanout RUNS=2 bash bench/run.sh
#   ONLY=fanout TRANSPORTS=websocket bash bench/run.sh   # sockets only
#
# Side by side with Socket.IO (bench/peer: Socket.IO 4, its Redis adapter,
# JWT auth), the same generator and scenarios on both, each run on fresh
# servers (a fresh redis-server, two fresh nodes, for confab a fresh SQLite
# file or Postgres database), confab and the peer alternating:
#
#   bash bench/run.sh --peer
#
# It runs `npm ci` in bench/peer when its node_modules is missing (Node.js
# 18 or later and npm needed), then the fan-out with 200 receivers and one
# sender at 100, 250, 500, 1000 and 2000 messages/s (20k to 400k deliveries/s
# offered), 5 s each, and the idle scenario with 10k sockets, one user each,
# and prints one table per scenario: confab | Socket.IO | confab/peer.
# Settings (environment):
#   RUNS=2               repeat each confab/peer pair; the tables show medians
#   RATES="100 500"      the sender's rates, messages/s (default 100 250 500 1000 2000)
#   SECONDS_PER_RUN=2    seconds of sending per fan-out run (default 5)
#   RECEIVERS=200        receivers in the fan-out (default 200)
#   IDLE_SOCKETS=1000    sockets in the idle run (default 10000; 0 skips it)
#   ONLY="fanout"        only the fan-out, or only "idle"
#   BIN=path             another build of the confab node
#   CONFAB_BENCH_POSTGRES_URL  confab on Postgres: a fresh database per run
#                        (CREATE DATABASE with psql; the URL's user may create them)
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=standard
case "${1:-}" in
  "") ;;
  --peer) MODE=peer ;;
  *) echo "usage: bash bench/run.sh [--peer]" >&2; exit 2 ;;
esac
SCALE=${SCALE:-1}
scale() { python3 -c "print(max(1, int($1 * $SCALE)))"; }

# NO_BUILD=1 runs the binaries as they are (a before/after series that
# another build in the same tree must not change halfway).
if [ -z "${NO_BUILD:-}" ]; then
  cargo build --release -q -p confab --bin confab
  cargo build --release -q -p confab-bench
fi
TARGET=${CARGO_TARGET_DIR:-target}
# BIN=path runs another build of the node (for before/after comparisons);
# it must know `serve --port-file`.
BIN=${BIN:-$TARGET/release/confab}
BENCH=$TARGET/release/confab-bench
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"

WORK=$(mktemp -d /tmp/confab-bench.XXXXXX)
RUN_DIR=$WORK
PIDS=()      # everything this script started
RUN_PIDS=()  # the servers of the current run
declare -A LOG_OF  # pid -> its log
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  drop_database
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Prints the last lines of the current run's server logs: those of the
# servers that are no longer running, or all when every one still runs.
show_logs() {
  local dead=() p
  for p in "${RUN_PIDS[@]}"; do kill -0 "$p" 2>/dev/null || dead+=("$p"); done
  [ "${#dead[@]}" -gt 0 ] || dead=("${RUN_PIDS[@]}")
  for p in "${dead[@]}"; do
    local state=running
    kill -0 "$p" 2>/dev/null || state="NOT RUNNING"
    echo "---- ${LOG_OF[$p]} (pid $p, $state), last lines:" >&2
    tail -n 40 "${LOG_OF[$p]}" >&2 || true
  done
}
fail() { echo "== $*" >&2; show_logs; exit 1; }

started() { # pid log
  PIDS+=("$1")
  RUN_PIDS+=("$1")
  LOG_OF[$1]=$2
}

start_redis() {
  REDIS_PORT=$(free_port)
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$RUN_DIR" >"$RUN_DIR/redis.log" 2>&1 &
  REDIS_PID=$!
  started "$REDIS_PID" "$RUN_DIR/redis.log"
  for _ in $(seq 1 100); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return 0
    kill -0 "$REDIS_PID" 2>/dev/null || break
    sleep 0.05
  done
  fail "redis-server did not start"
}

# confab on Postgres gets a fresh database per run in peer mode (and one
# for the whole standard set); the postgres processes count as server CPU
# when the server is on this machine and its data directory is readable.
PG_DB=
PG_PIDS=()
make_database() {
  if [ -z "${CONFAB_BENCH_POSTGRES_URL:-}" ]; then
    DB_URL="sqlite://$RUN_DIR/bench.db?mode=rwc"
    return
  fi
  if [ "$MODE" = standard ]; then
    DB_URL=$CONFAB_BENCH_POSTGRES_URL
  else
    PG_DB=confab_bench_$$_$RANDOM
    psql "$CONFAB_BENCH_POSTGRES_URL" -qAtc "CREATE DATABASE $PG_DB" >/dev/null ||
      fail "could not create database $PG_DB"
    DB_URL=$(python3 -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/" + sys.argv[2])))' "$CONFAB_BENCH_POSTGRES_URL" "$PG_DB")
  fi
}
drop_database() {
  if [ -n "$PG_DB" ]; then
    psql "$CONFAB_BENCH_POSTGRES_URL" -qAtc "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1 || true
    PG_DB=
  fi
}
# The postmaster and its children, read just before a scenario starts.
postgres_pids() {
  PG_PIDS=()
  [ -n "${CONFAB_BENCH_POSTGRES_URL:-}" ] || return 0
  local dir pm
  dir=$(psql "$CONFAB_BENCH_POSTGRES_URL" -qAtc "SHOW data_directory" 2>/dev/null) || return 0
  pm=$(head -n 1 "$dir/postmaster.pid" 2>/dev/null) || return 0
  kill -0 "$pm" 2>/dev/null || return 0
  PG_PIDS=("$pm")
  for c in $(pgrep -P "$pm"); do PG_PIDS+=("$c"); done
}

declare -A NODE_PID NODE_URL
# A node listens on a port the system picks and writes the address it bound
# to its port file: no port is guessed free and then taken by someone else.
start_node() { # name
  local port_file="$RUN_DIR/$1.port"
  rm -f "$port_file"
  CONFAB_SERVER__LISTEN=127.0.0.1:0 CONFAB_SERVER__NODE_ID=$1 \
  CONFAB_SERVER__DRAIN_SECS=2 \
  CONFAB_DATABASE__URL="$DB_URL" CONFAB_BUS__REDIS_URL=redis://127.0.0.1:$REDIS_PORT \
  CONFAB_LIMITS__MAX_CONNECTIONS_PER_USER=1000000 \
  CONFAB_LIMITS__SEND_RATE_PER_SEC=1000000 CONFAB_LIMITS__SEND_BURST=1000000 \
  CONFAB_LIMITS__FRAME_RATE_PER_SEC=1000000 CONFAB_LIMITS__FRAME_BURST=1000000 \
  CONFAB_LIMITS__MAX_MESSAGE_CHARS=20000 \
  CONFAB_LIMITS__MAX_PENDING_CONNECTIONS=1000000 CONFAB_LIMITS__MAX_PENDING_CONNECTIONS_PER_IP=0 \
  CONFAB_ASSISTANTS__DEFAULT__ECHO_DELAY_MS=1 \
  CONFAB_STREAMING__MAX_STREAMS_PER_USER=1000 \
  CONFAB_ASSISTANTS__CATCHUP__ECHO_DELAY_MS="${CATCHUP_DELAY_MS:-5}" \
  CONFAB_ASSISTANTS__LIMITED__ECHO_DELAY_MS="${QUEUE_DELAY_MS:-5}" \
  CONFAB_ASSISTANTS__LIMITED__MAX_CONCURRENT="${QUEUE_MAX_CONCURRENT:-4}" \
  CONFAB_ASSISTANTS__LIMITED__MAX_QUEUE=100000 \
  CONFAB_ASSISTANTS__UNLIMITED__ECHO_DELAY_MS="${QUEUE_DELAY_MS:-5}" \
  CONFAB_ASSISTANTS__UNLIMITED__MAX_QUEUE=100000 \
  RUST_LOG=warn \
    "$BIN" serve --port-file "$port_file" >"$RUN_DIR/$1.log" 2>&1 &
  NODE_PID[$1]=$!
  started "$!" "$RUN_DIR/$1.log"
  for _ in $(seq 1 200); do
    if [ -s "$port_file" ]; then
      NODE_URL[$1]=http://$(cat "$port_file")
      curl -sf "${NODE_URL[$1]}/ready" >/dev/null 2>&1 && return 0
    fi
    kill -0 "${NODE_PID[$1]}" 2>/dev/null || break
    sleep 0.05
  done
  fail "node $1 did not become ready"
}
# A Socket.IO peer node (bench/peer/server.js): the same port file handshake;
# it writes the file once it listens, after its Redis clients connected.
start_peer_node() { # name
  local port_file="$RUN_DIR/$1.port"
  rm -f "$port_file"
  PORT=0 REDIS_URL=redis://127.0.0.1:$REDIS_PORT PORT_FILE=$port_file \
    node bench/peer/server.js >"$RUN_DIR/$1.log" 2>&1 &
  NODE_PID[$1]=$!
  started "$!" "$RUN_DIR/$1.log"
  for _ in $(seq 1 200); do
    if [ -s "$port_file" ]; then
      NODE_URL[$1]=http://$(cat "$port_file")
      return 0
    fi
    kill -0 "${NODE_PID[$1]}" 2>/dev/null || break
    sleep 0.05
  done
  fail "peer node $1 did not start listening"
}
node_args() {
  both=(--node "${NODE_URL[a]}" --node "${NODE_URL[b]}" --node-pid "${NODE_PID[a]}" --node-pid "${NODE_PID[b]}" --server-pid "$REDIS_PID")
  postgres_pids
  for p in "${PG_PIDS[@]}"; do both+=(--server-pid "$p"); done
}

# ONLY="idle storm" runs just those scenarios.
want() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }

standard() {
  start_redis
  make_database
  start_node a
  start_node b
  node_args
  echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; database: ${DB_URL%%:*}; node pids a=${NODE_PID[a]} b=${NODE_PID[b]}"
  # This machine caps every process at 20000 file descriptors (hard limit):
  # the idle sockets are held by two helper processes, 10k on each node; the
  # storm puts all its sockets on one node, so it stays at 18k.
  if want idle; then $BENCH "${both[@]}" idle --sockets "$(scale 20000)" --procs 2; fi
  # One sender, 200 receivers: 250, 500 and 2200 messages/s are 50k, 100k
  # and 440k deliveries/s offered. The receivers on each transport of
  # TRANSPORTS in turn (sockets, then event streams: the HTTP transport),
  # at the same rates, the order swapped every other run; then one table
  # per rate, side by side.
  if want fanout; then standard_fanout; fi
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
  # Assistant answers: 100 watchers of one echo answer; tabs joining
  # mid-answer (their snapshot + later pieces must equal the stored answer:
  # 0 mismatches); a burst of requests through the queue with
  # max_concurrent, then without (none lost, at most max_concurrent
  # running at once).
  if want stream; then
    $BENCH "${both[@]}" stream --watchers 100 --tokens 1000
    $BENCH "${both[@]}" stream-catchup --assistant catchup --tabs "${CATCHUP_TABS:-100}" \
      --words "${CATCHUP_WORDS:-1000}" --join-after-ms "${CATCHUP_JOIN_AFTER_MS:-2500}"
    local queue_args=(--users "${QUEUE_USERS:-20}" --conversations "${QUEUE_CONVERSATIONS:-2}"
      --requests "${QUEUE_REQUESTS:-3}" --words "${QUEUE_WORDS:-20}")
    $BENCH "${both[@]}" stream-queue --assistant limited --limit "${QUEUE_MAX_CONCURRENT:-4}" "${queue_args[@]}"
    $BENCH "${both[@]}" stream-queue --assistant unlimited --limit 0 "${queue_args[@]}"
  fi
  # The conversation log: 20 conversations of 10 members (one socket each,
  # over both nodes), 1000 then 2000 operations/s in all: half sends, 30%
  # edits of the member's own recent messages, 20% reactions added to or
  # removed from the others'. Its seq violations must be 0.
  if want log; then
    for rate in ${LOG_RATES:-1000 2000}; do
      $BENCH "${both[@]}" log --conversations 20 --members 10 --rate "$rate" --edits 30 --reactions 20 --seconds 10
    done
  fi
  # Presence: 10k users, one connection each, in conversations of 100, all
  # on node a; every connection dropped at once and reconnected to node b.
  # The presence_changed frames and announcements during it should be about
  # 0. PRESENCE_TRANSPORT=http runs it over the HTTP transport. One process
  # holds all the connections: above about 18k (SCALE=1.8) its descriptors
  # run out here.
  if want presence; then
    $BENCH "${both[@]}" presence --connections "$(scale 10000)" --members 100 \
      --redis-port "$REDIS_PORT" --transport "${PRESENCE_TRANSPORT:-websocket}"
  fi
  # Last: the storms stop node a, drained (SIGTERM, spread over 2 s), then,
  # started again, killed (SIGKILL).
  if want storm; then
    $BENCH "${both[@]}" storm --sockets "$(scale 18000)"
    wait "${NODE_PID[a]}" || true
    start_node a
    node_args
    $BENCH "${both[@]}" storm --sockets "$(scale 18000)" --kill
  fi
  echo "== done"
}

# The standard set's fan-out: every rate on every transport of TRANSPORTS
# (default "websocket http"), alternating, RUNS times (default 1; the order
# of the transports swaps every other run), each run's JSON kept; then a
# table per rate: websocket | http | http/ws (medians over the runs).
standard_fanout() {
  local transports=${TRANSPORTS:-websocket http} runs=${RUNS:-1}
  local rates=${RATES:-250 500 2200} receivers=${RECEIVERS:-200} seconds=${SECONDS_PER_RUN:-5}
  local order t rate run out
  mkdir -p "$WORK/results"
  for run in $(seq 1 "$runs"); do
    order=$transports
    if [ $((run % 2)) -eq 0 ]; then
      # shellcheck disable=SC2086  # the list is words
      order=$(printf '%s\n' $transports | tac | tr '\n' ' ')
    fi
    for rate in $rates; do
      for t in $order; do
        echo "fan-out: $receivers receivers over $t, 1 sender at $rate msgs/s ($((rate * receivers)) deliveries/s offered), ${seconds} s; run $run of $runs"
        out="$WORK/results/fanout-$rate.$t.$run.json"
        if ! $BENCH "${both[@]}" --json fanout --receivers "$receivers" --rate "$rate" --seconds "$seconds" --transport "$t" >"$out"; then
          fail "confab-bench fanout failed ($t, $rate msgs/s)"
        fi
        summary "$out"
      done
    done
  done
  echo
  # shellcheck disable=SC2086  # the lists are words
  python3 - "$WORK/results" "$runs" "$receivers" "$seconds" $transports -- $rates <<'EOF'
import json, os, statistics, sys

results, runs, receivers, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rest = sys.argv[5:]
cut = rest.index("--")
transports, rates = rest[:cut], rest[cut + 1:]

def load(rate, t):
    out = []
    for run in range(1, runs + 1):
        path = os.path.join(results, f"fanout-{rate}.{t}.{run}.json")
        if os.path.exists(path):
            out.append(json.load(open(path)))
    return out

def median(rows, k):
    vals = [r[k] for r in rows if isinstance(r.get(k), (int, float))]
    return statistics.median(vals) if vals else None

ROWS = [
    ("receivers joined", "receivers connected and joined", "{:,.0f}"),
    ("delivered/s (sustained)", "deliveries/s sustained", "{:,.0f}"),
    ("lost deliveries", "lost deliveries", "{:,.0f}"),
    ("duplicates", "duplicate deliveries", "{:,.0f}"),
    ("latency p50 (ms)", "latency p50 (ms)", "{:.2f}"),
    ("latency p99 (ms)", "latency p99 (ms)", "{:.2f}"),
    ("latency p999 (ms)", "latency p999 (ms)", "{:.2f}"),
    ("node CPU µs/delivery", "node CPU per delivery (µs)", "{:.2f}"),
    ("server CPU µs/delivery", "server CPU per delivery (µs)", "{:.2f}"),
    ("node RSS after (MiB, both)", "node RSS after (MiB, all nodes)", "{:.1f}"),
    ("generator CPU (% of a core)", "generator CPU (% of a core)", "{:.0f}"),
    ("generator CPU µs/delivery", "generator CPU per delivery (µs)", "{:.2f}"),
]
# The second transport against the first (http/ws with the defaults).
pair = transports[:2] if len(transports) >= 2 else None
short = {"websocket": "ws"}
for rate in rates:
    cols = [load(rate, t) for t in transports]
    note = f"median of {runs} runs each" if runs > 1 else "one run each"
    print(f"== fan-out: {receivers} receivers, 1 sender at {rate} msgs/s "
          f"({int(rate) * receivers:,} deliveries/s offered), {seconds} s ({note})")
    w = max(len(r[0]) for r in ROWS)
    head = "".join(f"  {t:>12}" for t in transports)
    if pair:
        head += "  " + f"{short.get(pair[1], pair[1])}/{short.get(pair[0], pair[0])}".rjust(9)
    print(f"{'':<{w}}{head}")
    for label, k, fmt in ROWS:
        vals = [median(c, k) for c in cols]
        line = "".join("  " + ("-" if v is None else fmt.format(v)).rjust(12) for v in vals)
        if pair:
            a, b = vals[0], vals[1]
            line += "  " + (f"{b / a:.2f}" if a and b is not None else "-").rjust(9)
        print(f"{label:<{w}}{line}")
    print()
EOF
}

# Stops the current run's servers (SIGTERM, then SIGKILL after 5 s) and
# forgets them.
stop_run() {
  for p in "${RUN_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${RUN_PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  RUN_PIDS=()
  drop_database
}

# One run of one side on fresh servers: writes the bench's JSON to $out.
run_side() { # side (confab|peer) out bench-args...
  local side=$1 out=$2; shift 2
  RUN_DIR=$(mktemp -d "$WORK/$side.XXXX")
  start_redis
  local proto=confab
  if [ "$side" = confab ]; then
    make_database
    start_node a
    start_node b
  else
    start_peer_node a
    start_peer_node b
    proto=socketio
  fi
  node_args
  if ! "$BENCH" "${both[@]}" --proto "$proto" --json "$@" >"$out" 2>"$RUN_DIR/bench.err"; then
    cat "$RUN_DIR/bench.err" >&2
    fail "confab-bench failed ($side: $*)"
  fi
  # A server that died during the run is a result (its sockets' deliveries
  # count as lost), not a failure of the script: say so and show its log.
  for p in "${RUN_PIDS[@]}"; do
    if ! kill -0 "$p" 2>/dev/null; then
      echo "   !! ${LOG_OF[$p]##*/} of $side (pid $p) died during the run; its log:" >&2
      tail -n 40 "${LOG_OF[$p]}" >&2 || true
    fi
  done
  stop_run
}

# The one line a human sees after each run.
summary() { # json
  python3 - "$1" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
def g(k, fmt="{:,.0f}"):
    v = r.get(k)
    return "?" if v is None else fmt.format(v)
if r["scenario"] == "idle":
    print(f"   {g('sockets open (auth + joined)')} sockets, {g('RSS per socket (KiB, all nodes)', '{:.2f}')} KiB each, "
          f"{g('connect rate (sockets/s)')} sockets/s")
else:
    print(f"   {g('deliveries/s sustained')} deliveries/s, lost {g('lost deliveries')}, "
          f"p99 {g('latency p99 (ms)', '{:.1f}')} ms, {g('server CPU per delivery (µs)', '{:.2f}')} µs/delivery, "
          f"generator {g('generator CPU (% of a core)')}% of a core")
EOF
}

peer() {
  command -v node >/dev/null || { echo "--peer needs Node.js (18 or later) and npm" >&2; exit 1; }
  if [ ! -d bench/peer/node_modules ]; then
    echo "== npm ci in bench/peer"
    npm ci --prefix bench/peer --no-audit --no-fund
  fi
  local runs=${RUNS:-1} seconds=${SECONDS_PER_RUN:-5} receivers=${RECEIVERS:-200}
  local rates=${RATES:-"100 250 500 1000 2000"} idle_sockets=${IDLE_SOCKETS:-10000}
  mkdir -p "$WORK/results"
  # (scenario key, bench arguments, title) for each scenario.
  local keys=() args=() titles=()
  if want fanout; then
    for rate in $rates; do
      keys+=("fanout-$rate")
      args+=("fanout --receivers $receivers --rate $rate --seconds $seconds")
      titles+=("fan-out: $receivers receivers, 1 sender at $rate msgs/s ($((rate * receivers)) deliveries/s offered), $seconds s")
    done
  fi
  if want idle && [ "$idle_sockets" -gt 0 ]; then
    # At most 9000 sockets per helper process (20000 descriptors each here).
    local procs=$(( (idle_sockets + 8999) / 9000 ))
    [ "$procs" -ge 2 ] || procs=2
    keys+=(idle)
    args+=("idle --sockets $idle_sockets --procs $procs")
    titles+=("idle: $idle_sockets sockets, one user each, held by $procs helper processes")
  fi
  local total=$(( ${#keys[@]} * runs * 2 )) step=0
  local db=SQLite
  [ -z "${CONFAB_BENCH_POSTGRES_URL:-}" ] || db=Postgres
  echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; confab on $db (a fresh database each run)"
  echo "confab and Socket.IO alternating, each run on a fresh redis-server and 2 fresh nodes; $total runs"
  for i in "${!keys[@]}"; do
    echo "== ${titles[$i]}"
    for run in $(seq 1 "$runs"); do
      for side in confab peer; do
        step=$((step + 1))
        echo "[$step/$total] $side, run $run of $runs: ${args[$i]}"
        local out="$WORK/results/${keys[$i]}.$side.$run.json"
        # shellcheck disable=SC2086  # the arguments are words
        run_side "$side" "$out" ${args[$i]}
        summary "$out"
      done
    done
  done
  echo
  python3 - "$WORK/results" "$runs" "${keys[@]}" -- "${titles[@]}" <<'EOF'
import json, os, statistics, sys

results, runs = sys.argv[1], int(sys.argv[2])
rest = sys.argv[3:]
cut = rest.index("--")
keys, titles = rest[:cut], rest[cut + 1:]

def load(key, side):
    out = []
    for run in range(1, runs + 1):
        path = os.path.join(results, f"{key}.{side}.{run}.json")
        if os.path.exists(path):
            out.append(json.load(open(path)))
    return out

def median(rows, k):
    vals = [r[k] for r in rows if isinstance(r.get(k), (int, float))]
    return statistics.median(vals) if vals else None

FANOUT = [
    ("delivered/s (sustained)", "deliveries/s sustained", "{:,.0f}"),
    ("lost deliveries", "lost deliveries", "{:,.0f}"),
    ("duplicates", "duplicate deliveries", "{:,.0f}"),
    ("latency p50 (ms)", "latency p50 (ms)", "{:.2f}"),
    ("latency p99 (ms)", "latency p99 (ms)", "{:.2f}"),
    ("latency p999 (ms)", "latency p999 (ms)", "{:.2f}"),
    ("server CPU µs/delivery", "server CPU per delivery (µs)", "{:.2f}"),
    ("  of which nodes", "node CPU per delivery (µs)", "{:.2f}"),
    ("node RSS after (MiB, both)", "node RSS after (MiB, all nodes)", "{:.1f}"),
    ("generator CPU (% of a core)", "generator CPU (% of a core)", "{:.0f}"),
    ("generator CPU µs/delivery", "generator CPU per delivery (µs)", "{:.2f}"),
]
IDLE = [
    ("sockets open", "sockets open (auth + joined)", "{:,.0f}"),
    ("RSS per socket (KiB)", "RSS per socket (KiB, all nodes)", "{:.2f}"),
    ("node RSS after (MiB, both)", "node RSS after (MiB, all nodes)", "{:.1f}"),
    ("connect rate (sockets/s)", "connect rate (sockets/s)", "{:,.0f}"),
    ("auth p50 (ms)", "time to auth_success p50 (ms)", "{:.1f}"),
    ("auth p99 (ms)", "time to auth_success p99 (ms)", "{:.1f}"),
    ("server CPU µs/socket opened", "server CPU per socket opened (µs)", "{:.0f}"),
    ("generator CPU (s, with helpers)", "generator CPU (s, helpers included)", "{:.2f}"),
]

for key, title in zip(keys, titles):
    confab, peer = load(key, "confab"), load(key, "peer")
    rows = IDLE if key == "idle" else FANOUT
    note = f"median of {runs} runs each" if runs > 1 else "one run each"
    print(f"== {title} ({note})")
    w = max(len(r[0]) for r in rows)
    print(f"{'':<{w}}  {'confab':>12}  {'Socket.IO':>12}  {'confab/peer':>11}")
    for label, k, fmt in rows:
        a, b = median(confab, k), median(peer, k)
        sa = "-" if a is None else fmt.format(a)
        sb = "-" if b is None else fmt.format(b)
        ratio = f"{a / b:.2f}" if a and b else "-"
        print(f"{label:<{w}}  {sa:>12}  {sb:>12}  {ratio:>11}")
    print()
EOF
  echo "== done"
}

if [ "$MODE" = peer ]; then peer; else standard; fi
