#!/usr/bin/env bash
# The demo: a throwaway cluster with pg_jobs preloaded runs some of the
# guide's examples and prints the run history, then the dashboard
# (`pg-jobs serve`) starts against it. `make demo` builds and installs pg_jobs
# and the server first.
#   scripts/demo.sh          start (again, from scratch)
#   scripts/demo.sh stop     stop the dashboard and the cluster
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PORT=${DEMO_PORT:-54329}
LISTEN=${DEMO_LISTEN:-127.0.0.1:8288}
EXAMPLES=(hello user_onboarding parallel_processing payment_flow email_queue data_sync)

stop_server() {
    local pid_file="$1/pg-jobs.pid"
    [ -f "$pid_file" ] || return 0
    local pid
    pid=$(cat "$pid_file")
    # Only the process this script started: its pid may have been reused since.
    if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "pg-jobs serve"; then
        kill "$pid"
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$pid_file"
}

if [ "${1:-}" = stop ]; then
    stop_server "$("$ROOT/scripts/cluster.sh" dir demo)"
    "$ROOT/scripts/cluster.sh" stop demo
    exit 0
fi

stop_server "$("$ROOT/scripts/cluster.sh" dir demo)"
dir=$("$ROOT/scripts/cluster.sh" start demo "$PORT" "jobs.database = 'postgres'")
psql=(psql -X -q -h "$dir" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1)

"${psql[@]}" -c "CREATE EXTENSION pg_jobs"
for example in "${EXAMPLES[@]}"; do
    echo "== examples/$example.sql"
    "${psql[@]}" -f "$ROOT/examples/$example.sql" >/dev/null
done

for _ in $(seq 1 300); do
    [ "$("${psql[@]}" -Atc "SELECT count(*) FROM jobs.queue")" = 0 ] && break
    sleep 0.1
done

echo
echo "== the runs, from jobs.runs"
"${psql[@]}" -P pager=off -c "
    SELECT r.function_id, e.name AS event, r.status, r.attempt,
           round(extract(epoch FROM r.ended_at - r.created_at) * 1000, 1) AS ms,
           coalesce(left(r.output::text, 50), r.error->>'message') AS output_or_error
    FROM jobs.runs r JOIN jobs.events e ON e.id = r.event_id
    ORDER BY r.created_at"
echo "== their steps, from jobs.steps (each run's timeline)"
"${psql[@]}" -P pager=off -c "
    SELECT r.function_id, s.id AS step, s.kind, s.status, s.attempts,
           round(extract(epoch FROM s.ended_at - s.started_at) * 1000, 2) AS ms,
           coalesce(left(s.output::text, 40), s.error->>'message') AS output_or_error
    FROM jobs.steps s JOIN jobs.runs r ON r.id = s.run_id
    ORDER BY r.created_at, s.started_at"

# The dashboard, as the superuser that ran the examples: it sees every function.
nohup "$ROOT/target/release/pg-jobs" serve --listen "$LISTEN" \
    --database-url "postgresql://postgres@127.0.0.1:$PORT/postgres" >"$dir/pg-jobs.log" 2>&1 &
echo $! >"$dir/pg-jobs.pid"
for _ in $(seq 1 100); do
    grep -q "dashboard on" "$dir/pg-jobs.log" && break
    if ! kill -0 "$(cat "$dir/pg-jobs.pid")" 2>/dev/null; then
        cat "$dir/pg-jobs.log" >&2
        echo "demo: the dashboard did not start (is $LISTEN in use? set DEMO_LISTEN)" >&2
        exit 1
    fi
    sleep 0.1
done
url=$(grep -o 'http://[^ ]*' "$dir/pg-jobs.log" | head -1)

cat <<EOT
The demo cluster and its dashboard are still running; the other examples are in examples/.
  dashboard: $url   (log: $dir/pg-jobs.log)
  connect:   psql -h $dir -p $PORT -U postgres
  stop:      make demo-stop
EOT
[ "$("${psql[@]}" -Atc "SELECT status FROM jobs.runs WHERE function_id = 'hello-world'")" = completed ]
