-- The guide's data validation (zod in the guide): the event's data must have a
-- string userId and an email. pg_jobs checks a JSON Schema when the event is
-- sent, in the sender's transaction: bad data is refused and nothing runs.
--
--   const schema = z.object({ userId: z.string(), email: z.string().email() });
--   const data = schema.parse(event.data);
--   await step.run("process", () => processUser(data.userId, data.email));

CREATE TABLE IF NOT EXISTS processed_users (user_id text, email text);

SELECT jobs.define_event('app/user.created', '{
    "type": "object",
    "required": ["userId", "email"],
    "properties": {
        "userId": {"type": "string"},
        "email": {"type": "string", "format": "email"}
    }
}');

CREATE OR REPLACE FUNCTION validated_function(ctx jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    -- No need to validate here: the data passed the schema.
    PERFORM jobs.step('process',
        'INSERT INTO processed_users VALUES ($1->>''userId'', $1->>''email'')', ctx->'event'->'data');
END
$$;

SELECT jobs.create_function('validated-function', 'validated_function(jsonb)', '{"event": "app/user.created"}');

-- Try it:
SELECT jobs.send('app/user.created', '{"userId": "u-1", "email": "ada@example.com"}');
-- SELECT jobs.send('app/user.created', '{"userId": 1, "email": "not-an-email"}');
--   ERROR:  data of event "app/user.created" does not match its schema:
--           data/email: "not-an-email" is not a "email" (rule /properties/email/format); ...
