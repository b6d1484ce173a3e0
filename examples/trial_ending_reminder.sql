-- The guide's trial-ending reminders: remind on day 7 and day 9, and restrict
-- the account at the end of the trial unless the user subscribed.
--
--   await step.sleep("wait-7-days", "7d");   await step.run("send-first-reminder", ...);
--   await step.sleep("wait-2-more-days", "2d");   await step.run("send-final-reminder", ...);
--   await step.sleep("wait-until-end", "1d");
--   const user = await step.run("check-subscription", ...);
--   if (!user.subscription) await step.run("restrict-account", ...);

CREATE TABLE IF NOT EXISTS outbox_emails (
    id bigserial PRIMARY KEY, to_address text, subject text, body text, template text, data jsonb,
    sent_at timestamptz DEFAULT now());
CREATE TABLE IF NOT EXISTS app_users (
    id int PRIMARY KEY, email text, account_status text DEFAULT 'trial', subscription_id text);

CREATE OR REPLACE FUNCTION trial_ending_reminder(ctx jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    trial jsonb := ctx->'event'->'data';   -- {"userId", "email", "trialEndsAt"}
    app_user jsonb;
BEGIN
    PERFORM jobs.sleep('wait-7-days', '7d');
    PERFORM jobs.step('send-first-reminder',
        $step$ INSERT INTO outbox_emails (to_address, subject, template, data)
               VALUES ($1->>'email', 'Your trial is ending in 3 days', 'trial-reminder-3days',
                       jsonb_build_object('userId', $1->'userId')) $step$, trial);

    PERFORM jobs.sleep('wait-2-more-days', '2d');
    PERFORM jobs.step('send-final-reminder',
        $step$ INSERT INTO outbox_emails (to_address, subject, template, data)
               VALUES ($1->>'email', 'Last chance! Trial ends tomorrow', 'trial-reminder-1day',
                       jsonb_build_object('userId', $1->'userId')) $step$, trial);

    PERFORM jobs.sleep('wait-until-end', '1d');
    app_user := jobs.step('check-subscription',
        'SELECT id, email, subscription_id FROM app_users WHERE id = ($1->>''userId'')::int', trial);

    IF app_user->>'subscription_id' IS NULL THEN
        PERFORM jobs.step('restrict-account',
            $step$ UPDATE app_users SET account_status = 'restricted' WHERE id = ($1->>'userId')::int;
                   INSERT INTO outbox_emails (to_address, subject, template, data)
                   VALUES ($1->>'email', 'Your trial has ended', 'trial-ended',
                           jsonb_build_object('userId', $1->'userId')) $step$, trial);
    END IF;
END
$$;

SELECT jobs.create_function('trial-ending-reminder', 'trial_ending_reminder(jsonb)', '{"event": "app/trial.started"}');

-- Try it (the run sleeps for a week; see jobs.steps for where it is):
INSERT INTO app_users (id, email) VALUES (7, 'grace@example.com') ON CONFLICT DO NOTHING;
SELECT jobs.send('app/trial.started', jsonb_build_object('userId', 7, 'email', 'grace@example.com',
                                                         'trialEndsAt', now() + interval '10 days'));
