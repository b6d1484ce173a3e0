#!/usr/bin/env bash
# The demo: a throwaway cluster with pg_jobs preloaded runs the guide's first
# function, and prints its run. `make demo` builds and installs pg_jobs first.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PORT=${DEMO_PORT:-54329}
dir=$("$ROOT/scripts/cluster.sh" start demo "$PORT" "jobs.database = 'postgres'")
psql=(psql -X -q -h "$dir" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1)

"${psql[@]}" -c "CREATE EXTENSION pg_jobs"
echo "== examples/hello.sql"
"${psql[@]}" -f "$ROOT/examples/hello.sql" >/dev/null

for _ in $(seq 1 300); do
    status=$("${psql[@]}" -Atc "SELECT status FROM jobs.runs WHERE function_id = 'hello-world'")
    case "$status" in completed | failed) break ;; esac
    sleep 0.1
done

echo "== the run, from jobs.runs"
"${psql[@]}" -x -c "SELECT id, function_id, status, attempt, output, error, created_at, started_at, ended_at
                   FROM jobs.runs WHERE function_id = 'hello-world'"
echo "== its steps, from jobs.steps"
"${psql[@]}" -c "SELECT s.id, s.kind, s.status, s.attempts, s.output,
                        round(extract(epoch FROM s.ended_at - s.started_at) * 1000, 2) AS ms
                 FROM jobs.steps s JOIN jobs.runs r ON r.id = s.run_id
                 WHERE r.function_id = 'hello-world' ORDER BY s.started_at"
cat <<EOT
The demo cluster is still running.
  connect:  psql -h $dir -p $PORT -U postgres
  stop:     make demo-stop
EOT
[ "$status" = completed ]
