#!/usr/bin/env bash
# A throwaway PostgreSQL cluster with pg_jobs preloaded, for the demo and the benchmarks.
#   scripts/cluster.sh start NAME PORT [setting ...]   initdb (fresh) and start
#   scripts/cluster.sh stop NAME
#   scripts/cluster.sh dir NAME                        print the directory it lives in
# Data, socket and log live in target/NAME (or /tmp/pg_jobs-NAME when the
# postgres user cannot reach target/). Servers run as the postgres OS user when
# invoked as root, since PostgreSQL refuses to run as root.
set -euo pipefail

PG_MAJOR=${PG_MAJOR:-15}
BIN=$(${PG_CONFIG:-/usr/lib/postgresql/$PG_MAJOR/bin/pg_config} --bindir)
ROOT=$(cd "$(dirname "$0")/.." && pwd)

as_server_user() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

cluster_dir() {
    local dir="$ROOT/target/$1"
    mkdir -p "$dir"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
    if ! as_server_user test -w "$dir" 2>/dev/null; then
        dir="/tmp/pg_jobs-$1"
        mkdir -p "$dir"
        [ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
    fi
    echo "$dir"
}

command=${1:?usage: cluster.sh start|stop|dir NAME [PORT setting...]}
name=${2:?cluster name}
dir=$(cluster_dir "$name")

case "$command" in
start)
    port=${3:?port}
    shift 3
    if [ -f "$dir/data/postmaster.pid" ]; then
        as_server_user "$BIN/pg_ctl" -D "$dir/data" stop -m immediate -w >/dev/null 2>&1 || true
    fi
    rm -rf "$dir/data"
    as_server_user "$BIN/initdb" --auth=trust --username=postgres --encoding=UTF8 -D "$dir/data" >/dev/null
    {
        echo "port = $port"
        echo "listen_addresses = 'localhost'"
        echo "unix_socket_directories = '$dir'"
        echo "shared_preload_libraries = 'pg_jobs'"
        for setting in "$@"; do echo "$setting"; done
    } >>"$dir/data/postgresql.auto.conf"
    # The server gets the environment a service manager would give it: with
    # RUST_BACKTRACE set, every error raised through Rust code (a step
    # suspending its run is one) also records a stack trace.
    as_server_user env -u RUST_BACKTRACE -u RUST_LIB_BACKTRACE \
        "$BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w start >/dev/null
    echo "$dir"
    ;;
stop)
    if [ -f "$dir/data/postmaster.pid" ]; then
        as_server_user "$BIN/pg_ctl" -D "$dir/data" stop -m fast -w >/dev/null
    fi
    ;;
dir)
    echo "$dir"
    ;;
*)
    echo "usage: cluster.sh start|stop|dir NAME [PORT setting...]" >&2
    exit 2
    ;;
esac
