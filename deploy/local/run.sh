#!/usr/bin/env bash
# Starts the local development federation (deploy/local/*.toml) by hand, in the
# background: the Zhejiang coordinator (7100) and the Hangzhou, Ningbo and Wenzhou nodes
# (7101-7103), each with Prometheus metrics (9100-9103), on mutual TLS; then loads each
# city's sample data (deploy/sample/<region>/) and benefit policies (deploy/policies/).
#
#   bash deploy/local/run.sh          start what is not running, load the data
#   bash deploy/local/run.sh stop     stop what this script started (pid files)
#
# Re-running it changes nothing: running processes are left alone, certificates are
# kept, imports and policy publishes are idempotent (the summary says "unchanged").
# Everything lives under yidi-data/ (git-ignored): certs/ (deploy/local/make-certs.sh),
# one store per region, and local/ with the logs (local/logs/*.log) and pid files.
#
# YIDI is the binary to use (default: target/release/yidi; this script builds nothing).
# YIDI_LOCAL_ROOT is the directory holding deploy/ and yidi-data/ (default: the
# repository this script is in). YIDI_LOCAL_TIMEOUT is how many seconds a server may
# take to answer (default 30).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# A relative YIDI names a file from where the script was started.
case ${YIDI:-} in
    '' | /*) ;;
    */*) YIDI=$PWD/$YIDI ;;
esac
root=${YIDI_LOCAL_ROOT:-$(cd "$here/../.." && pwd)}
cd "$root"

certs=yidi-data/certs
run=yidi-data/local
logs=$run/logs
timeout=${YIDI_LOCAL_TIMEOUT:-30}
regions=(330100 330200 330300)

port_of() { # region -> gRPC port of deploy/local
    case $1 in
        330000) echo 7100 ;; 330100) echo 7101 ;; 330200) echo 7102 ;; 330300) echo 7103 ;;
    esac
}

alive() { # name -> 0 if the process of its pid file runs
    local pidfile=$run/$1.pid
    [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

stop() {
    local name pid stopped=0
    for name in "${regions[@]}" 330000; do
        [ -f "$run/$name.pid" ] || continue
        pid=$(cat "$run/$name.pid")
        if kill -0 "$pid" 2>/dev/null; then
            # SIGTERM: the server drains in-flight requests and closes its store.
            kill -TERM "$pid"
            for _ in $(seq 1 $((timeout * 10))); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            if kill -0 "$pid" 2>/dev/null; then
                echo "error: $name (pid $pid) did not stop within ${timeout}s; see $logs/$name.log" >&2
                exit 1
            fi
            echo "stopped $name (pid $pid)"
            stopped=$((stopped + 1))
        fi
        rm -f "$run/$name.pid"
    done
    [ "$stopped" -gt 0 ] || echo "nothing was running (no live pid file in $run)"
}

case "${1:-start}" in
    start) ;;
    stop) stop; exit 0 ;;
    *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac

if [ -n "${YIDI:-}" ]; then
    bin=$YIDI
else
    bin=$root/target/release/yidi
    if [ ! -x "$bin" ]; then
        echo "error: $bin not found: run \`cargo build --release\` first (or set YIDI to a yidi binary)" >&2
        exit 2
    fi
fi
if [ ! -x "$bin" ]; then
    echo "error: YIDI=$bin is not an executable file" >&2
    exit 2
fi

mkdir -p "$logs"

if [ ! -f "$certs/ca/ca.crt" ]; then
    echo "making the federation's certificates in $certs (deploy/local/make-certs.sh)"
    YIDI=$bin bash "$here/make-certs.sh" >"$logs/make-certs.log" 2>&1 || {
        cat "$logs/make-certs.log" >&2
        exit 1
    }
fi

start() { # name, yidi arguments...
    local name=$1
    shift
    if alive "$name"; then
        echo "$name already running (pid $(cat "$run/$name.pid"))"
        return
    fi
    "$bin" "$@" >>"$logs/$name.log" 2>&1 &
    echo $! >"$run/$name.pid"
}

# Polls a read-only call until the server answers, the process dies, or the timeout.
wait_ready() { # name, command...
    local name=$1 deadline=$((SECONDS + timeout))
    shift
    until "$@" >/dev/null 2>&1; do
        if ! alive "$name"; then
            echo "error: $name exited; the end of $logs/$name.log:" >&2
            tail -n 20 "$logs/$name.log" >&2
            exit 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "error: $name did not answer within ${timeout}s; see $logs/$name.log" >&2
            exit 1
        fi
        sleep 0.2
    done
}

operator() { # region -> TLS flags of its operator certificate
    local role=admin
    [ "$1" = 330000 ] && role=clearing
    echo --ca "$certs/ca/ca.crt" \
        --cert "$certs/operators/operator-$1-$role.crt" \
        --key "$certs/operators/operator-$1-$role.key"
}

admin() { # region, admin arguments...
    local r=$1
    shift
    # shellcheck disable=SC2046 # the flags are paths without spaces
    "$bin" admin --node "https://127.0.0.1:$(port_of "$r")" $(operator "$r") "$@"
}

start 330000 coordinator --config deploy/local/coordinator.toml
for r in "${regions[@]}"; do
    start "$r" node --config "deploy/local/node-$r.toml"
done
# shellcheck disable=SC2046
wait_ready 330000 "$bin" clearing --coordinator https://127.0.0.1:7100 $(operator 330000) status
for r in "${regions[@]}"; do
    wait_ready "$r" admin "$r" info
done
echo "coordinator and nodes are up; loading the sample data (output in $logs/load.log)"

# The last field of an import's summary line: "N inserted, N updated, N unchanged, N
# rejected"; the whole output goes to the load log.
imported() { # region, what, file
    local out
    if ! out=$(admin "$1" "$2" import "$3" 2>&1); then
        echo "$out" >>"$logs/load.log"
        echo "error: $1 $2 import $3 failed; see $logs/load.log" >&2
        exit 1
    fi
    echo "$out" >>"$logs/load.log"
    echo "$out" | sed -n -E 's/^.*\): ([0-9]+ inserted.*)$/\1/p' | head -n 1
}

published() { # region, insurance type
    local out
    if ! out=$(admin "$1" policy publish "deploy/policies/$1-$2.toml" 2>&1); then
        echo "$out" >>"$logs/load.log"
        echo "error: publishing deploy/policies/$1-$2.toml failed; see $logs/load.log" >&2
        exit 1
    fi
    echo "$out" >>"$logs/load.log"
    echo "$out" | sed -n -E 's/^(published version [0-9]+|unchanged, version [0-9]+).*$/\1/p'
}

for r in "${regions[@]}"; do
    echo "$r persons:      $(imported "$r" person "deploy/sample/$r/persons.csv")"
    echo "$r catalogue:    $(imported "$r" catalogue "deploy/sample/$r/catalogue.csv")"
    echo "$r institutions: $(imported "$r" institution "deploy/sample/$r/institutions.csv")"
    echo "$r policies:     employee $(published "$r" employee); resident $(published "$r" resident)"
done

cat <<EOF

The local federation runs in the background (logs in $logs/, metrics on
http://127.0.0.1:9100/metrics ... 9103). Act as Hangzhou's operator:

  export YIDI_CA=$certs/ca/ca.crt
  export YIDI_CERT=$certs/operators/operator-330100-admin.crt
  export YIDI_KEY=$certs/operators/operator-330100-admin.key
  $bin admin --node https://127.0.0.1:7101 info

As a hospital, use $certs/hospitals/institution-<region>-<code>.{crt,key} instead
(docs/integrator.md); as the clearing operator, operator-330000-clearing with
\`$bin clearing --coordinator https://127.0.0.1:7100\` (docs/clearing.md).
Stop everything with:  bash deploy/local/run.sh stop
EOF
