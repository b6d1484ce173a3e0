-- The guide's subscription cancellation: confirm by email, wait until the paid
-- period ends, then revoke access. pg_jobs adds what a real app wants: if the
-- user renews before then, the run is cancelled (cancel_on).
--
--   await step.run("send-cancellation-email", ...);
--   const waitTime = new Date(cancelsAt).getTime() - Date.now();
--   await step.sleep("wait-until-expiry", `${waitTime}ms`);
--   await step.run("revoke-access", ...);

CREATE TABLE IF NOT EXISTS outbox_emails (
    id bigserial PRIMARY KEY, to_address text, subject text, body text, template text, data jsonb,
    sent_at timestamptz DEFAULT now());
CREATE TABLE IF NOT EXISTS app_users (
    id int PRIMARY KEY, email text, account_status text DEFAULT 'trial', subscription_id text);

CREATE OR REPLACE FUNCTION subscription_canceled(ctx jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    cancellation jsonb := ctx->'event'->'data';   -- {"userId", "cancelsAt"}
BEGIN
    PERFORM jobs.step('send-cancellation-email',
        $step$ INSERT INTO outbox_emails (to_address, subject, template, data)
               SELECT email, 'Subscription canceled', 'subscription-canceled',
                      jsonb_build_object('userId', id, 'accessEndsAt', $1->>'cancelsAt')
               FROM app_users WHERE id = ($1->>'userId')::int $step$,
        cancellation);

    -- sleep_until: no need to compute a duration from the clock.
    PERFORM jobs.sleep_until('wait-until-expiry', (cancellation->>'cancelsAt')::timestamptz);

    PERFORM jobs.step('revoke-access',
        $step$ UPDATE app_users SET account_status = 'restricted', subscription_id = NULL
               WHERE id = ($1->>'userId')::int $step$,
        cancellation);
END
$$;

SELECT jobs.create_function('subscription-canceled', 'subscription_canceled(jsonb)', '{
    "event": "app/subscription.canceled",
    "cancel_on": [{"event": "app/subscription.renewed", "match": "data.userId"}]
}');

-- Try it:
INSERT INTO app_users (id, email, account_status, subscription_id)
VALUES (8, 'linus@example.com', 'active', 'sub_8') ON CONFLICT DO NOTHING;
SELECT jobs.send('app/subscription.canceled', jsonb_build_object('userId', 8, 'cancelsAt', now() + interval '30 days'));
-- A renewal before the end cancels the run:
--   SELECT jobs.send('app/subscription.renewed', '{"userId": 8}');
