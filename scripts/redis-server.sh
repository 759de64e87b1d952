#!/usr/bin/env bash
# A throwaway redis-server on 127.0.0.1 for the broker example and tests.
#
#   scripts/redis-server.sh install      install Debian's redis-server if it is missing
#   scripts/redis-server.sh start DIR    start one on a free port, data in DIR; prints the port
#   scripts/redis-server.sh stop DIR     stop the one started with DIR
#
# Bound to 127.0.0.1 only, no persistence, daemonized with its pid in DIR.
# Only the port goes to stdout; everything else goes to stderr.
#
# `install` exits 3, saying why on stderr, when redis-server is missing and
# cannot be installed here (not Debian, not root, or apt-get failed);
# tests/broker.rs then skips, unless CI=true. REDIS_SERVER and REDIS_CLI
# name other binaries than the ones on PATH.
set -euo pipefail

REDIS_SERVER=${REDIS_SERVER:-redis-server}
REDIS_CLI=${REDIS_CLI:-redis-cli}

# Every redis-cli call is bounded: a wedged server must not hang a test.
cli() {
    timeout 3 "$REDIS_CLI" -h 127.0.0.1 "$@" 2>/dev/null
}

have_redis() {
    command -v "$REDIS_SERVER" >/dev/null 2>&1 && command -v "$REDIS_CLI" >/dev/null 2>&1
}

install() {
    if have_redis; then
        return 0
    fi
    if [ ! -r /etc/debian_version ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "$REDIS_SERVER or $REDIS_CLI is missing, and this is not Debian (no apt-get) to install it" >&2
        return 3
    fi
    if [ "$(id -u)" != 0 ]; then
        echo "$REDIS_SERVER or $REDIS_CLI is missing, and installing Debian's redis-server needs root" >&2
        return 3
    fi
    echo "installing redis-server (Debian package)" >&2
    # Keep the package from starting its system service (Debian's policy-rc.d
    # protocol: 101 = action forbidden), unless the machine already has a policy.
    local policy=/usr/sbin/policy-rc.d own_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod 755 "$policy"
        own_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    local installed=1
    if ! apt-get update -qq >&2 \
        || ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >&2; then
        installed=0
    fi
    if [ "$own_policy" = 1 ]; then
        rm -f "$policy"
        trap - EXIT
    fi
    if [ "$installed" = 0 ]; then
        echo "apt-get could not install redis-server" >&2
        return 3
    fi
    # Should a system instance be up on 6379 anyway, stop it: this script never uses it.
    if [ "$(cli -p 6379 ping || true)" = "PONG" ]; then
        cli -p 6379 shutdown nosave >/dev/null || service redis-server stop >/dev/null 2>&1 || true
    fi
    have_redis || { echo "$REDIS_SERVER or $REDIS_CLI still not on PATH after installing" >&2; return 3; }
}

# A port nobody listens on right now (the server binds it a moment later; start retries on a race).
free_port() {
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
        return
    fi
    local port
    for _ in $(seq 1 200); do
        port=$((20000 + RANDOM % 40000))
        # Nothing accepts a connection there.
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    echo "no free port found" >&2
    return 1
}

# Is PID a live redis-server (not a reused pid of something else)?
is_redis() {
    local pid=$1
    kill -0 "$pid" 2>/dev/null && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$(basename "$REDIS_SERVER" | cut -c1-15)" ]
}

start() {
    local dir=$1
    install
    mkdir -p "$dir"
    rm -f "$dir/redis.pid" "$dir/port"
    local port pid
    for _ in 1 2 3 4 5; do
        port=$(free_port)
        "$REDIS_SERVER" --bind 127.0.0.1 --port "$port" --dir "$dir" --save '' --appendonly no \
            --protected-mode yes --daemonize yes --pidfile "$dir/redis.pid" \
            --logfile "$dir/redis.log" >&2 || continue
        # Up to ~10 s for PONG; give up early if the daemon died (e.g. the port was taken).
        for _ in $(seq 1 100); do
            if [ "$(cli -p "$port" ping || true)" = "PONG" ]; then
                echo "$port" > "$dir/port"
                echo "$port"
                return 0
            fi
            if [ -f "$dir/redis.pid" ]; then
                pid=$(cat "$dir/redis.pid")
                if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
                    break
                fi
            fi
            sleep 0.1
        done
        echo "redis-server on port $port did not answer; retrying" >&2
        echo "$port" > "$dir/port"
        stop "$dir"
        rm -f "$dir/redis.pid" "$dir/port"
    done
    echo "redis-server did not start; see $dir/redis.log" >&2
    return 1
}

stop() {
    local dir=$1 signals="TERM"
    if [ -f "$dir/port" ]; then
        cli -p "$(cat "$dir/port")" shutdown nosave >/dev/null || true
        signals="none TERM"
    fi
    [ -f "$dir/redis.pid" ] || return 0
    local pid
    pid=$(cat "$dir/redis.pid")
    [ -n "$pid" ] || return 0
    # Up to 5 s for the shutdown (if one was sent), then SIGTERM (a redis-server
    # shuts down on it too), up to 5 s more, then SIGKILL.
    local sig
    for sig in $signals; do
        [ "$sig" = none ] || kill -"$sig" "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            is_redis "$pid" || return 0
            sleep 0.1
        done
    done
    kill -KILL "$pid" 2>/dev/null || true
}

case "${1:-}" in
    install) install ;;
    start) start "${2:?usage: $0 start DIR}" ;;
    stop) stop "${2:?usage: $0 stop DIR}" ;;
    *) echo "usage: $0 install | start DIR | stop DIR" >&2; exit 2 ;;
esac
