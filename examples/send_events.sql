-- Sending events (the guide's "イベントの送信"). An application sends with one
-- SQL statement, inside its own transaction: if the transaction rolls back,
-- no event is recorded and nothing runs.
--
--   await inngest.send({ name: "app/hello.world", data: { name } });
--
-- From Node.js (node-postgres):
--   await client.query("SELECT jobs.send($1, $2)", ["app/hello.world", { name }]);
-- From Python (psycopg 3):
--   conn.execute("SELECT jobs.send(%s, %s)", ("app/hello.world", Jsonb({"name": name})))

-- One event; returns its id.
SELECT jobs.send('app/hello.world', '{"name": "Grace"}');

-- With an id: the same id within 24 hours is recorded but starts nothing
-- (a retried HTTP request cannot start the work twice).
SELECT jobs.send('app/hello.world', '{"name": "Grace"}', id => 'signup-grace');
SELECT jobs.send('app/hello.world', '{"name": "Grace"}', id => 'signup-grace');

-- Later: the runs it starts wait until ts.
SELECT jobs.send('app/hello.world', '{"name": "Linus"}', ts => now() + interval '1 hour');

-- Several at once, all or nothing (Inngest's array form).
SELECT jobs.send('[{"name": "app/hello.world", "data": {"name": "Ada"}},
                   {"name": "app/hello.world", "data": {"name": "Alan"}}]'::jsonb);

-- Inside the application's own transaction.
BEGIN;
-- INSERT INTO users ... ;
SELECT jobs.send('app/hello.world', '{"name": "Barbara"}');
COMMIT;
