-- The guide's first function: "hello-world", run by the event "app/hello.world".
--
--   inngest.createFunction({ id: "hello-world" }, { event: "app/hello.world" },
--     async ({ event, step }) => {
--       await step.run("say-hello", async () => {
--         console.log(`Hello, ${event.data.name}!`);
--         return { message: `Hello, ${event.data.name}!` };
--       });
--     });
--
--   await inngest.send({ name: "app/hello.world", data: { name } });

CREATE OR REPLACE FUNCTION hello_world(ctx jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    -- The step runs once, in its own transaction; its value is kept in jobs.steps.
    RETURN jobs.step('say-hello',
        $step$
            SELECT jsonb_build_object('message', format('Hello, %s!', $1->>'name'))
        $step$,
        ctx->'event'->'data');
END
$$;

SELECT jobs.create_function('hello-world', 'hello_world(jsonb)', '{"event": "app/hello.world"}');

-- From the application, inside its own transaction:
SELECT jobs.send('app/hello.world', '{"name": "Ada"}');
