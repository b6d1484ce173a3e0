-- The dashboard's runs list (pg-jobs serve): newest first by id (UUIDv7, so in
-- creation order; a time range is a range of ids), filtered by function or by
-- status. Each filter has an index whose last column is the id, so a page of
-- the list reads a page of one index, however long the history is.
CREATE INDEX runs_function_id_id ON jobs.runs (function_id, id);
CREATE INDEX runs_status_id ON jobs.runs (status, id);
