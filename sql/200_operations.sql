-- "Are the workers up?" in one query: the launcher and each executor, with
-- its pid, whether it is running a run (and which) and its last heartbeat.
CREATE VIEW jobs.workers AS
SELECT kind, slot, pid, state, run_id, last_heartbeat FROM jobs._workers();
