-- pg_jobs 0.1.0 -> 0.2.0 (ALTER EXTENSION pg_jobs UPDATE). Written by hand:
-- every definition, event, run and step is kept, and queued, sleeping and
-- waiting runs go on after the update. The result must equal a fresh 0.2.0
-- install (pg_test/tests/upgrade.rs compares the two).

-- The dashboard's runs list (sql/300_dashboard.sql).
CREATE INDEX runs_function_id_id ON jobs.runs (function_id, id);
CREATE INDEX runs_status_id ON jobs.runs (status, id);
