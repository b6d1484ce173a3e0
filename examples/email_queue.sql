-- The guide's email queue: send through a provider (Resend in the guide), then
-- log the result. Two steps: a failed log is retried without sending again.
--
--   const result = await step.run("send-email", () => resend.emails.send({...}));
--   await step.run("log-result", () => db.emailLog.create({...}));
--   return { success: true, messageId: result.id };

-- The provider: it records the message and returns its id.
CREATE TABLE IF NOT EXISTS resend_messages (
    id text PRIMARY KEY DEFAULT 'msg_' || substr(md5(random()::text), 1, 12),
    from_address text, to_address text, subject text, html text, sent_at timestamptz DEFAULT now());
CREATE TABLE IF NOT EXISTS email_log (to_address text, subject text, status text, message_id text);

CREATE OR REPLACE FUNCTION send_email_job(ctx jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    email jsonb := ctx->'event'->'data';   -- {"to", "subject", "body"}
    result jsonb;
BEGIN
    result := jobs.step('send-email',
        $step$ INSERT INTO resend_messages (from_address, to_address, subject, html)
               VALUES ('noreply@example.com', $1->>'to', $1->>'subject', $1->>'body')
               RETURNING id $step$,
        email);
    PERFORM jobs.step('log-result',
        $step$ INSERT INTO email_log VALUES ($1->>'to', $1->>'subject', 'sent', $1->>'messageId') $step$,
        email || jsonb_build_object('messageId', result));
    RETURN jsonb_build_object('success', true, 'messageId', result);
END
$$;

SELECT jobs.create_function('send-email', 'send_email_job(jsonb)', '{"event": "app/email.send", "retries": 3}');

-- Try it:
SELECT jobs.send('app/email.send', '{"to": "ada@example.com", "subject": "Your invoice", "body": "<p>Thanks!</p>"}');
