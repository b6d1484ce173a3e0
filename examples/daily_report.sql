-- The guide's daily report: every day at 9:00, build a report and mail it.
--
--   inngest.createFunction({ id: "daily-report" }, { cron: "0 9 * * *" },
--     async ({ step }) => {
--       const report = await step.run("generate-report", ...);   // db.getYesterdayStats()
--       await step.run("send-report", ...);                      // sendEmail(...)
--     });

CREATE TABLE IF NOT EXISTS outbox_emails (
    id bigserial PRIMARY KEY, to_address text, subject text, body text, template text, data jsonb,
    sent_at timestamptz DEFAULT now());
CREATE TABLE IF NOT EXISTS orders (id serial PRIMARY KEY, total numeric, placed_at timestamptz DEFAULT now());

CREATE OR REPLACE FUNCTION daily_report(ctx jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    report jsonb;
BEGIN
    report := jobs.step('generate-report',
        $step$ SELECT count(*) AS orders, coalesce(sum(total), 0) AS revenue
               FROM orders
               WHERE placed_at >= date_trunc('day', now()) - interval '1 day'
                 AND placed_at < date_trunc('day', now()) $step$);
    PERFORM jobs.step('send-report',
        $step$ INSERT INTO outbox_emails (to_address, subject, body)
               VALUES ('admin@example.com', 'Daily Report', jsonb_pretty($1)) $step$,
        report);
END
$$;

SELECT jobs.create_function('daily-report', 'daily_report(jsonb)', '{"cron": "0 9 * * *"}');

-- When will it run?
SELECT function_id, expression, timezone, next_fire_at FROM jobs.schedules WHERE function_id = 'daily-report';
