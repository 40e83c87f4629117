#!/usr/bin/env bash
# A real Redis server for tests and benchmarks, from Debian's packages (installed if missing).
#
#   scripts/redis.sh start [DIR]   start a server in DIR (default target/redis) on a free port,
#                                  wait until it answers PING, print "127.0.0.1:PORT"; reuses a
#                                  running one
#   scripts/redis.sh stop [DIR]    stop it (SIGTERM, then SIGKILL)
#   scripts/redis.sh port [DIR]    print the address of the running server, or fail
#
# The server keeps nothing on disk (no RDB, no AOF): the cluster shape keeps nothing in Redis
# whose loss loses a message, and the tests restart it empty on purpose.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
cmd="${1:-start}"
dir="${2:-$root/target/redis}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

running_pid() {
    [[ -f "$dir/pid" ]] || return 1
    local pid; pid="$(cat "$dir/pid")"
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

install_redis() {
    command -v redis-server >/dev/null && return 0
    echo "installing redis-server from Debian's packages" >&2
    local sudo=""
    [[ "$(id -u)" == 0 ]] || sudo="sudo"
    $sudo apt-get update -qq >&2 || true
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >&2
    # The package starts a system-wide server; ours run on their own ports.
    $sudo systemctl disable --now redis-server >/dev/null 2>&1 || true
}

case "$cmd" in
start)
    if pid="$(running_pid)"; then
        echo "127.0.0.1:$(cat "$dir/port")"
        exit 0
    fi
    install_redis
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
        --dir "$dir" --logfile "$dir/redis.log" --daemonize no >/dev/null 2>&1 &
    echo $! > "$dir/pid"
    echo "$port" > "$dir/port"
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port" && printf 'PING\r\n' >&3 && read -r -t 1 reply <&3 \
            && [[ "$reply" == +PONG* ]]) 2>/dev/null; then
            echo "127.0.0.1:$port"
            exit 0
        fi
        sleep 0.1
    done
    echo "redis did not answer on port $port; its log:" >&2
    tail -n 20 "$dir/redis.log" >&2 || true
    exit 1
    ;;
stop)
    if pid="$(running_pid)"; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/pid"
    ;;
port)
    running_pid >/dev/null || { echo "no redis running in $dir" >&2; exit 1; }
    echo "127.0.0.1:$(cat "$dir/port")"
    ;;
*)
    echo "usage: $0 start|stop|port [DIR]" >&2; exit 2 ;;
esac
