#!/usr/bin/env bash
# A throwaway redis-server on 127.0.0.1 for the broker example and test.
#
#   scripts/redis-server.sh install      install Debian's redis-server if it is missing
#   scripts/redis-server.sh start DIR    start one on a free port, data in DIR; prints the port
#   scripts/redis-server.sh stop DIR     stop the one started with DIR
#
# Bound to 127.0.0.1 only, no persistence, daemonized with its pid in DIR.
set -euo pipefail

install() {
    if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
        return 0
    fi
    echo "installing redis-server (Debian package)" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >&2
    # The package may start a system instance on 6379; this script never uses it.
    if redis-cli -p 6379 ping >/dev/null 2>&1; then
        redis-cli -p 6379 shutdown nosave >/dev/null 2>&1 || service redis-server stop >/dev/null 2>&1 || true
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

start() {
    local dir=$1
    install
    mkdir -p "$dir"
    local port
    for _ in 1 2 3 4 5; do
        port=$(free_port)
        if redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" --save '' --appendonly no \
            --protected-mode yes --daemonize yes --pidfile "$dir/redis.pid" \
            --logfile "$dir/redis.log" >&2; then
            for _ in $(seq 1 100); do
                if [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = "PONG" ]; then
                    echo "$port" > "$dir/port"
                    echo "$port"
                    return 0
                fi
                sleep 0.1
            done
            stop "$dir"
        fi
    done
    echo "redis-server did not start; see $dir/redis.log" >&2
    return 1
}

stop() {
    local dir=$1
    if [ -f "$dir/port" ]; then
        redis-cli -h 127.0.0.1 -p "$(cat "$dir/port")" shutdown nosave >/dev/null 2>&1 || true
    fi
    if [ -f "$dir/redis.pid" ]; then
        local pid
        pid=$(cat "$dir/redis.pid")
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || return 0
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
}

case "${1:-}" in
    install) install ;;
    start) start "${2:?usage: $0 start DIR}" ;;
    stop) stop "${2:?usage: $0 stop DIR}" ;;
    *) echo "usage: $0 install | start DIR | stop DIR" >&2; exit 2 ;;
esac
