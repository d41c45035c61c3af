#!/usr/bin/env bash
# What hostile clients cost one node: never-reading sockets asking for the
# largest history pages (node RSS), slowloris connections (how long they
# live), and more idle connections than the node has descriptors (its CPU).
# Starts its own node (release build, SQLite, the embedded defaults) for
# each, and stops it after.
#
#   bash bench/hostile.sh                       # this build
#   BIN=/path/to/other/confab bash bench/hostile.sh   # another build, to compare
#                                                     # (one that knows `serve --port-file`)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p confab --bin confab
cargo build --release -q -p confab-bench
BIN=${BIN:-target/release/confab}
BENCH=target/release/confab-bench

WORK=$(mktemp -d /tmp/confab-hostile.XXXXXX)
PID=
stop_node() { if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=; fi; }
trap 'stop_node; rm -rf "$WORK"' EXIT
# The node listens on a port the system picks and writes the address it
# bound to a port file: no port is guessed free and then taken by someone else.
start_node() { # name [prlimit args...]
  local name=$1; shift
  local port_file="$WORK/$name.port"
  rm -f "$WORK"/db* "$port_file"
  CONFAB_SERVER__LISTEN=127.0.0.1:0 CONFAB_DATABASE__URL="sqlite://$WORK/db.sqlite?mode=rwc" \
  CONFAB_LIMITS__SEND_RATE_PER_SEC=1000000 CONFAB_LIMITS__SEND_BURST=1000000 \
  CONFAB_LIMITS__FRAME_RATE_PER_SEC=1000000 CONFAB_LIMITS__FRAME_BURST=1000000 \
  RUST_LOG=error "$@" "$BIN" serve --port-file "$port_file" >"$WORK/$name.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 200); do
    if [ -s "$port_file" ]; then
      URL=http://$(cat "$port_file")
      curl -sf "$URL/ready" >/dev/null 2>&1 && return 0
    fi
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.05
  done
  echo "node did not become ready" >&2; cat "$WORK/$name.log" >&2; exit 1
}

echo "node: $BIN"
# 16 sockets of one user (the per-user limit), 100 pages of 200 x 8000 chars each.
start_node history
$BENCH --node "$URL" --node-pid "$PID" hostile --attack history --conns 16 --seconds 20
stop_node
# 200 connections, half dribbling a header line a second, half silent.
start_node slowloris
$BENCH --node "$URL" --node-pid "$PID" hostile --attack slowloris --conns 200 --seconds 60
stop_node
# A node with 1024 descriptors, no capacity limit of its own (so accept runs
# out of descriptors), and 1500 idle connections.
start_node flood prlimit --nofile=1024:1024 env CONFAB_SERVER__MAX_CONNECTIONS=1000000 \
  CONFAB_LIMITS__MAX_PENDING_CONNECTIONS=1000000 CONFAB_LIMITS__MAX_PENDING_CONNECTIONS_PER_IP=0 \
  CONFAB_SERVER__HEADER_TIMEOUT_SECS=600
$BENCH --node "$URL" --node-pid "$PID" hostile --attack flood --conns 1500 --seconds 10
stop_node
