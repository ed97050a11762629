#!/usr/bin/env bash
# weft against tokio (current_thread, hyper for HTTP) and Twisted (CPython, epoll reactor),
# on the same scenarios, in one run on this machine. From a fresh clone:
#
#   benches/compare/run.sh
#
# It needs the Rust toolchain, python3.11 (with venv) and network access to crates.io and
# PyPI the first time: it installs the pinned Twisted and matplotlib into
# benches/compare/.venv, builds weft's examples/peer_bench (plain, and with the count-allocs
# feature for allocations per operation), the tokio peer and the load generator
# (benches/compare/target), then measures, and writes
#
#   benches/results/compare-DATE.md      the report (machine, versions, load, tables, ratios)
#   benches/results/compare-DATE/*.svg   the plots
#   benches/results/compare-DATE.jsonl   the raw JSON lines
#
# About 15 minutes with the defaults on a 2-core machine. Knobs (environment variables):
#   IMPLS="weft tokio twisted"   implementations to run
#   BENCHES="chain chain-nested fanout cancel-chain gather timers timers-cancel reactor-timers"
#                                micro-benchmarks ("" for none)
#   SIZES="1000 10000 100000"    sizes N of every micro-benchmark
#   ROUNDS=2                     rounds of all micro-benchmarks, interleaved; each variant's
#                                lowest round median is reported
#   ALLOCS=1                     count allocations per op (weft and tokio) in an untimed pass
#   BENCH_BUDGET_S               seconds of repetitions per variant (peers' default: Rust 1, Python 1.5)
#   MICRO_TIMEOUT=300            seconds before one micro-benchmark process is killed
#   ECHO=1 ECHO_SCENARIOS="1:1 100:1 1000:1 10:16" MSG_SIZE=64     TCP echo (conns:pipeline)
#   HTTP=1 HTTP_SCENARIOS="1:1 100:1 1000:1 10:16"                 GET /hello
#   HTTP_SLEEP_MS=10 HTTP_SLEEP_SCENARIOS="100:1"                  GET /sleep/MS ("" for none)
#   SECS=5 WARMUP=1              measured and warm-up seconds of each load scenario
#   LOADGEN_FLAGS="--busy-poll"  extra load generator flags ("" lets it sleep in epoll_wait)
#   PIN=1                        servers on CPU 0, load generator on CPU 1 (taskset), when possible
#   BASE_PORT=24400              servers listen on 127.0.0.1:BASE_PORT, BASE_PORT+1, ... (below
#                                Linux's ephemeral range, where the load generator's own
#                                connections could hold a port)
#   OUT=benches/results          where the report goes; NAME=compare-DATE its file name
#   NOTE="..."                   a sentence for the report (e.g. what else loaded the machine)
#
# An implementation without an `http-server` subcommand (weft until weft::web provides one)
# is skipped in the HTTP part, with a note in the report. Every server this script starts
# is stopped by its process id (SIGTERM, then SIGKILL) when it is done or the script exits.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT"

IMPLS=${IMPLS:-"weft tokio twisted"}
BENCHES=${BENCHES-"chain chain-nested fanout cancel-chain gather timers timers-cancel reactor-timers"}
SIZES=${SIZES:-"1000 10000 100000"}
ROUNDS=${ROUNDS:-2}
ALLOCS=${ALLOCS:-1}
MICRO_TIMEOUT=${MICRO_TIMEOUT:-300}
ECHO=${ECHO:-1}
ECHO_SCENARIOS=${ECHO_SCENARIOS:-"1:1 100:1 1000:1 10:16"}
MSG_SIZE=${MSG_SIZE:-64}
HTTP=${HTTP:-1}
HTTP_SCENARIOS=${HTTP_SCENARIOS:-"1:1 100:1 1000:1 10:16"}
HTTP_SLEEP_MS=${HTTP_SLEEP_MS:-10}
HTTP_SLEEP_SCENARIOS=${HTTP_SLEEP_SCENARIOS-"100:1"}
SECS=${SECS:-5}
WARMUP=${WARMUP:-1}
LOADGEN_FLAGS=${LOADGEN_FLAGS---busy-poll}
PIN=${PIN:-1}
BASE_PORT=${BASE_PORT:-24400}
OUT=${OUT:-$ROOT/benches/results}
NAME=${NAME:-compare-$(date +%F)}

say() { echo "[compare $(date +%T)] $*" >&2; }

# ---------------------------------------------------------------- set up
for tool in cargo rustc python3.11; do
    command -v "$tool" >/dev/null || { echo "run.sh needs $tool (see the top of this file)" >&2; exit 2; }
done
VENV=$HERE/.venv
PY=$VENV/bin/python
if ! "$PY" -c 'import twisted, matplotlib' 2>/dev/null \
    || ! cmp -s "$HERE/requirements.txt" "$VENV/requirements.installed"; then
    say "installing Twisted and matplotlib (requirements.txt) into $VENV"
    python3.11 -m venv "$VENV"
    "$PY" -m pip install --quiet --disable-pip-version-check -r "$HERE/requirements.txt"
    cp "$HERE/requirements.txt" "$VENV/requirements.installed"
fi

BIN=$HERE/target/bin
mkdir -p "$BIN"
say "building weft's peer_bench (release)"
cargo build --quiet --release --locked --example peer_bench
cp target/release/examples/peer_bench "$BIN/weft-peer"
if [[ $ALLOCS == 1 ]]; then
    cargo build --quiet --release --locked --example peer_bench --features count-allocs
    cp target/release/examples/peer_bench "$BIN/weft-peer-allocs"
fi
for crate in tokio-peer loadgen; do
    say "building $crate (release)"
    cargo build --quiet --release --locked --manifest-path "$HERE/$crate/Cargo.toml" --target-dir "$HERE/target"
    cp "$HERE/target/release/$crate" "$BIN/$crate"
done
if [[ $ALLOCS == 1 ]]; then
    cargo build --quiet --release --locked --manifest-path "$HERE/tokio-peer/Cargo.toml" \
        --target-dir "$HERE/target" --features count-allocs
    cp "$HERE/target/release/tokio-peer" "$BIN/tokio-peer-allocs"
fi
LOADGEN=$BIN/loadgen

declare -A PEER=([weft]="$BIN/weft-peer" [tokio]="$BIN/tokio-peer" [twisted]="$PY $HERE/twisted_peer.py")
declare -A COUNTING=([weft]="$BIN/weft-peer-allocs" [tokio]="$BIN/tokio-peer-allocs")
for impl in $IMPLS; do
    [[ -n ${PEER[$impl]:-} ]] || { echo "unknown implementation $impl (weft, tokio, twisted)" >&2; exit 2; }
done

SERVER_CPU="" LOADGEN_CPU="" PINNING="none"
if [[ $PIN == 1 ]] && command -v taskset >/dev/null && [[ $(nproc) -ge 2 ]]; then
    SERVER_CPU="taskset -c 0" LOADGEN_CPU="taskset -c 1"
    PINNING="servers on CPU 0, load generator on CPU 1 (taskset)"
fi

BUDGET_TEXT="1 s (Rust), 1.5 s (Python)"
[[ -z ${BENCH_BUDGET_S:-} ]] || BUDGET_TEXT="$BENCH_BUDGET_S s"
mkdir -p "$OUT"
RAW=$OUT/$NAME.jsonl
REPORT=$OUT/$NAME.md
PLOTS=$OUT/$NAME
commit=$(git rev-parse --short HEAD 2>/dev/null || echo "?")
if [[ -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]]; then commit="$commit+changes"; fi
"$PY" "$HERE/report.py" info "$RAW" \
    "weft=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)" "commit=$commit" \
    "rustc=$(rustc -V)" "sizes=$SIZES" "rounds=$ROUNDS" "budget=$BUDGET_TEXT" \
    "secs=$SECS" "warmup=$WARMUP" "msg_size=$MSG_SIZE" "loadgen_flags=$LOADGEN_FLAGS" \
    "pinning=$PINNING" \
    "note=${NOTE:-}"

# ---------------------------------------------------------------- micro-benchmarks
micro() { # impl bench n command extra-fields...
    local impl=$1 bench=$2 n=$3 cmd=$4 out rc
    shift 4
    set +e
    # shellcheck disable=SC2086 # $cmd is a command line
    out=$(timeout "$MICRO_TIMEOUT" $cmd "$bench" "$n")
    rc=$?
    set -e
    if [[ $rc -ne 0 ]] || ! printf '%s\n' "$out" | "$PY" "$HERE/report.py" add "$RAW" "$impl" "$@"; then
        say "  $impl $bench $n FAILED (exit $rc)"
        "$PY" "$HERE/report.py" error "$RAW" "$impl" "$bench" "$n" "exit $rc"
    fi
}

for round in $(seq "$ROUNDS"); do
    for bench in $BENCHES; do
        for n in $SIZES; do
            for impl in $IMPLS; do
                say "round $round/$ROUNDS: $impl $bench $n"
                micro "$impl" "$bench" "$n" "${PEER[$impl]}" "round=$round"
            done
        done
    done
done
if [[ $ALLOCS == 1 ]]; then
    for bench in $BENCHES; do
        for n in $SIZES; do
            for impl in $IMPLS; do
                [[ -n ${COUNTING[$impl]:-} ]] || continue
                say "allocations: $impl $bench $n"
                BENCH_BUDGET_S=0 BENCH_MIN_REPS=1 BENCH_MAX_REPS=1 \
                    micro "$impl" "$bench" "$n" "${COUNTING[$impl]}" "pass=allocs"
            done
        done
    done
fi

# ---------------------------------------------------------------- servers under load
SERVER_PID=""
SERVER_LOG=$(mktemp -t compare-server.XXXXXX)
stop_server() {
    [[ -n $SERVER_PID ]] || return 0
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        say "server $SERVER_PID ignored SIGTERM: SIGKILL"
        kill -9 "$SERVER_PID" 2>/dev/null || true
    fi
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}
cleanup() {
    stop_server
    rm -f "$SERVER_LOG"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Starts `impl`'s `kind` server on `port`; returns 1 (and records why) if it did not come up.
start_server() { # impl kind port bench
    local impl=$1 kind=$2 port=$3 bench=$4
    if listening "$port"; then
        "$PY" "$HERE/report.py" error "$RAW" "$impl" "$bench" 0 "port $port is in use"
        return 1
    fi
    : >"$SERVER_LOG"
    # shellcheck disable=SC2086 # command lines
    $SERVER_CPU ${PEER[$impl]} "$kind" "$port" 2>"$SERVER_LOG" &
    SERVER_PID=$!
    for _ in $(seq 100); do
        listening "$port" && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    local why rc=0
    why=$(head -c 300 "$SERVER_LOG" | tr '\n\t' '  ')
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        stop_server
        "$PY" "$HERE/report.py" error "$RAW" "$impl" "$bench" 0 "$kind did not listen within 10 s: $why"
        return 1
    fi
    wait "$SERVER_PID" || rc=$?
    SERVER_PID=""
    if grep -qiE 'usage|unknown' "$SERVER_LOG"; then
        # The peer does not have this subcommand (yet): skip it, with a note in the report.
        say "$impl has no $kind: skipped"
        "$PY" "$HERE/report.py" error "$RAW" "$impl" "$bench" 0 \
            "skipped: the peer has no \`$kind\` subcommand (it exited with status $rc: $why)" skipped
    else
        say "$impl $kind exited with status $rc before listening"
        "$PY" "$HERE/report.py" error "$RAW" "$impl" "$bench" 0 "$kind exited with status $rc: $why"
    fi
    return 1
}

drive() { # impl bench conns:pipeline loadgen-flags...
    local impl=$1 bench=$2 conns=${3%%:*} pipeline=${3#*:} out rc
    shift 3
    say "  $impl $bench $conns connections x $pipeline in flight"
    set +e
    # shellcheck disable=SC2086 # flag lists
    out=$(timeout "$LOAD_TIMEOUT" $LOADGEN_CPU "$LOADGEN" --addr "127.0.0.1:$port" \
        --conns "$conns" --pipeline "$pipeline" --duration "$SECS" --warmup "$WARMUP" \
        --server-pid "$SERVER_PID" $LOADGEN_FLAGS "$@")
    rc=$?
    set -e
    # Exit 3: the run finished with protocol errors or no good reply; keep its row.
    if [[ $rc -eq 0 || $rc -eq 3 ]] && printf '%s\n' "$out" | "$PY" "$HERE/report.py" add "$RAW" "$impl" "bench=$bench"; then
        [[ $rc -eq 0 ]] || "$PY" "$HERE/report.py" error "$RAW" "$impl" "$bench" "$conns" "protocol errors or no good reply (loadgen exit 3)"
    else
        "$PY" "$HERE/report.py" error "$RAW" "$impl" "$bench" "$conns" "loadgen exit $rc: $out"
    fi
    sleep 0.5 # let the server close the last connections
}

LOAD_TIMEOUT=$(awk -v a="$SECS" -v b="$WARMUP" 'BEGIN { printf "%d", a + b + 60 }')
port=$BASE_PORT
if [[ $ECHO == 1 ]]; then
    for impl in $IMPLS; do
        say "$impl echo-server on 127.0.0.1:$port"
        if start_server "$impl" echo-server "$port" echo; then
            for sc in $ECHO_SCENARIOS; do drive "$impl" echo "$sc" --msg-size "$MSG_SIZE"; done
            stop_server
        fi
        port=$((port + 1))
    done
fi
if [[ $HTTP == 1 ]]; then
    for impl in $IMPLS; do
        say "$impl http-server on 127.0.0.1:$port"
        if start_server "$impl" http-server "$port" http; then
            for sc in $HTTP_SCENARIOS; do drive "$impl" http "$sc" --http --path /hello; done
            for sc in $HTTP_SLEEP_SCENARIOS; do
                drive "$impl" "http-sleep$HTTP_SLEEP_MS" "$sc" --http --path "/sleep/$HTTP_SLEEP_MS"
            done
            stop_server
        fi
        port=$((port + 1))
    done
fi

# ---------------------------------------------------------------- report
"$PY" "$HERE/report.py" finish "$RAW"
"$PY" "$HERE/report.py" render "$RAW" "$REPORT" "$PLOTS"
say "report: $REPORT (plots in $PLOTS/, raw lines in $RAW)"
