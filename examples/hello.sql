-- The guide's first function: "hello-world", run by the event "app/hello.world".
--
--   inngest.createFunction({ id: "hello-world" }, { event: "app/hello.world" },
--       async ({ event, step }) => { ... `Hello, ${event.data.name}!` ... });
--   inngest.send({ name: "app/hello.world", data: { name } });

CREATE OR REPLACE FUNCTION hello_world(ctx jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    RAISE LOG 'Hello, %!', ctx->'event'->'data'->>'name';
    RETURN jsonb_build_object('message', format('Hello, %s!', ctx->'event'->'data'->>'name'));
END
$$;

SELECT jobs.create_function('hello-world', 'hello_world(jsonb)', '{"event": "app/hello.world"}');

-- From the application, inside its own transaction:
SELECT jobs.send('app/hello.world', '{"name": "Ada"}');
