-- The guide's email queue: send through Resend's HTTP API with jobs.fetch,
-- then log the result. Two steps: a failed log is retried without sending
-- again, and a retried send carries the same Idempotency-Key, which Resend
-- uses to send the message once.
--
--   const result = await step.run("send-email", () => resend.emails.send({...}));
--   await step.run("log-result", () => db.emailLog.create({...}));
--   return { success: true, messageId: result.id };
--
-- As a superuser first (README, "Calling other services"):
--   ALTER SYSTEM SET jobs.fetch_allowed_hosts = 'api.resend.com'; SELECT pg_reload_conf();
--   GRANT EXECUTE ON FUNCTION jobs.fetch(text, text, text, jsonb, jsonb, interval, integer[]) TO app;

-- Where the API is (a test points it at a local server).
CREATE TABLE IF NOT EXISTS app_settings (name text PRIMARY KEY, value text NOT NULL);
INSERT INTO app_settings VALUES ('resend_url', 'https://api.resend.com') ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS email_log (to_address text, subject text, status text, message_id text);

-- The API key is a secret of the role that owns the function: the request
-- gets it, the history shows {{secret.RESEND_API_KEY}}.
SELECT jobs.set_secret('RESEND_API_KEY', 're_123456789');

CREATE OR REPLACE FUNCTION send_email_job(ctx jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    email jsonb := ctx->'event'->'data';   -- {"to", "subject", "body"}
    sent jsonb;
BEGIN
    sent := jobs.fetch('send-email',
        (SELECT value FROM app_settings WHERE name = 'resend_url') || '/emails', 'POST',
        headers => '{"Authorization": "Bearer {{secret.RESEND_API_KEY}}"}',
        body => jsonb_build_object('from', 'noreply@example.com', 'to', email->>'to',
                                   'subject', email->>'subject', 'html', email->>'body'));
    PERFORM jobs.step('log-result',
        $step$ INSERT INTO email_log VALUES ($1->>'to', $1->>'subject', 'sent', $1->>'messageId') $step$,
        email || jsonb_build_object('messageId', sent->'body'->>'id'));
    RETURN jsonb_build_object('success', true, 'messageId', sent->'body'->>'id');
END
$$;

SELECT jobs.create_function('send-email', 'send_email_job(jsonb)', '{"event": "app/email.send", "retries": 3}');

-- Try it:
SELECT jobs.send('app/email.send', '{"to": "ada@example.com", "subject": "Your invoice", "body": "<p>Thanks!</p>"}');
