-- The guide's user onboarding: three steps. If a step fails, the run resumes at
-- that step; the ones before it do not run again.
--
--   inngest.createFunction({ id: "user-onboarding" }, { event: "app/user.created" },
--     async ({ event, step }) => {
--       await step.run("send-welcome-email", ...);      // sendEmail(...)
--       const profile = await step.run("create-user-profile", ...);
--       await step.run("send-slack-notification", ...);
--       return { success: true, profileId: profile.id };
--     });

-- Stand-ins for the outside world: what would have been sent is recorded.
CREATE TABLE IF NOT EXISTS outbox_emails (
    id bigserial PRIMARY KEY, to_address text, subject text, body text, template text, data jsonb,
    sent_at timestamptz DEFAULT now());
CREATE TABLE IF NOT EXISTS slack_messages (channel text, text text, sent_at timestamptz DEFAULT now());
CREATE TABLE IF NOT EXISTS user_profiles (id serial PRIMARY KEY, user_id int, display_name text);

CREATE OR REPLACE FUNCTION user_onboarding(ctx jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    user_data jsonb := ctx->'event'->'data';
    profile jsonb;
BEGIN
    PERFORM jobs.step('send-welcome-email',
        $step$ INSERT INTO outbox_emails (to_address, subject, body)
               VALUES ($1->>'email', 'Welcome!', 'Thank you for signing up!')
               RETURNING true AS sent $step$,
        user_data);

    profile := jobs.step('create-user-profile',
        $step$ INSERT INTO user_profiles (user_id, display_name)
               VALUES (($1->>'userId')::int, $1->>'name')
               RETURNING id, user_id, display_name $step$,
        user_data);

    PERFORM jobs.step('send-slack-notification',
        $step$ INSERT INTO slack_messages (channel, text)
               VALUES ('#new-users', 'New user signed up: ' || ($1->>'name')) $step$,
        user_data);

    RETURN jsonb_build_object('success', true, 'profileId', profile->'id');
END
$$;

SELECT jobs.create_function('user-onboarding', 'user_onboarding(jsonb)', '{"event": "app/user.created"}');

-- Try it:
SELECT jobs.send('app/user.created', '{"userId": 42, "email": "ada@example.com", "name": "Ada"}');
