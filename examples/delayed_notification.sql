-- The guide's delayed notification: sleep seven days, then remind. The sleeping
-- run holds no worker and no connection.
--
--   await step.sleep("wait-7-days", "7d");
--   await step.run("send-reminder", ...);   // sendEmail(...)

CREATE TABLE IF NOT EXISTS outbox_emails (
    id bigserial PRIMARY KEY, to_address text, subject text, body text, template text, data jsonb,
    sent_at timestamptz DEFAULT now());

CREATE OR REPLACE FUNCTION delayed_notification(ctx jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM jobs.sleep('wait-7-days', '7d');
    PERFORM jobs.step('send-reminder',
        $step$ INSERT INTO outbox_emails (to_address, subject, body)
               VALUES ($1->>'email', 'Your trial is ending soon!', 'Only 3 days left in your trial.') $step$,
        ctx->'event'->'data');
END
$$;

SELECT jobs.create_function('delayed-notification', 'delayed_notification(jsonb)', '{"event": "app/trial.started"}');

-- Try it (the run sleeps; SELECT status FROM jobs.runs says 'sleeping'):
SELECT jobs.send('app/trial.started', '{"userId": 7, "email": "grace@example.com"}');
