-- The guide's first best practice, "keep steps small": a step is the unit of
-- retry, so each outside effect gets a step of its own.
--
--   // Good
--   await step.run("send-email", () => sendEmail(data));
--   await step.run("update-database", () => db.update(data));
--   // Bad
--   await step.run("do-everything", async () => {
--     await sendEmail(data); await db.update(data); await notifySlack(data);
--     // a retry does all of it again
--   });
--
-- Both functions below meet a database whose first update fails. The good
-- one sends its email once; the bad one sends it again with its retry.

-- Outside services: what would have been sent. An email that left cannot be
-- called back, so a failed attempt does not undo it: dblink or an HTTP call
-- would behave the same; here a sequence (not rolled back) stands for the mail
-- server's log.
CREATE SEQUENCE IF NOT EXISTS emails_sent;
CREATE TABLE IF NOT EXISTS accounts (id int PRIMARY KEY, updates int DEFAULT 0);
CREATE SEQUENCE IF NOT EXISTS account_update_calls;

CREATE OR REPLACE FUNCTION send_email(data jsonb) RETURNS bigint
LANGUAGE sql AS $$ SELECT nextval('emails_sent') $$;

-- The database is unavailable for the first call.
CREATE OR REPLACE FUNCTION update_account(data jsonb) RETURNS int
LANGUAGE plpgsql AS $$
BEGIN
    IF nextval('account_update_calls') = 1 THEN
        RAISE EXCEPTION 'could not connect to the accounts database';
    END IF;
    INSERT INTO accounts (id, updates) VALUES ((data->>'accountId')::int, 1)
    ON CONFLICT (id) DO UPDATE SET updates = accounts.updates + 1;
    RETURN (data->>'accountId')::int;
END
$$;

-- Good: two steps; the retry runs only update-database.
CREATE OR REPLACE FUNCTION small_steps(ctx jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM jobs.step('send-email', 'SELECT send_email($1)', ctx->'event'->'data');
    PERFORM jobs.step('update-database', 'SELECT update_account($1)', ctx->'event'->'data');
END
$$;

-- Bad: one step; the retry sends the email again.
CREATE OR REPLACE FUNCTION one_big_step(ctx jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM jobs.step('do-everything',
        'SELECT send_email($1); SELECT update_account($1)', ctx->'event'->'data');
END
$$;

SELECT jobs.create_function('small-steps', 'small_steps(jsonb)',
    '{"event": "app/account.updated", "retries": {"attempts": 3, "backoff": {"type": "fixed", "base": "1s"}}}');

-- Try it: the good way first...
SELECT jobs.send('app/account.updated', '{"accountId": 1}');
-- ...then, once it has completed, the bad way (see pg_test/tests/examples.rs):
--   SELECT jobs.delete_function('small-steps');
--   SELECT setval('account_update_calls', 1, false);
--   SELECT jobs.create_function('one-big-step', 'one_big_step(jsonb)',
--       '{"event": "app/account.updated", "retries": {"attempts": 3, "backoff": {"type": "fixed", "base": "1s"}}}');
--   SELECT jobs.send('app/account.updated', '{"accountId": 2}');
--   SELECT last_value FROM emails_sent;   -- one more email per failed attempt
