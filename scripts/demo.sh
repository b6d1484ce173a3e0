#!/usr/bin/env bash
# The demo: a throwaway cluster with pg_jobs preloaded runs some of the
# guide's examples and prints the run history. `make demo` builds and
# installs pg_jobs first.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PORT=${DEMO_PORT:-54329}
EXAMPLES=(hello user_onboarding parallel_processing payment_flow email_queue data_sync)
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
cat <<EOT
The demo cluster is still running; the other examples are in examples/.
  connect:  psql -h $dir -p $PORT -U postgres
  stop:     make demo-stop
EOT
[ "$("${psql[@]}" -Atc "SELECT status FROM jobs.runs WHERE function_id = 'hello-world'")" = completed ]
