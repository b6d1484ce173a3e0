-- The guide's payment flow: process the payment, then wait up to an hour for
-- its completion event. The event that arrives is matched on data.paymentId.
--
--   await step.run("process-payment", ...);
--   const paymentEvent = await step.waitForEvent("wait-for-payment",
--     { event: "app/payment.completed", timeout: "1h", match: "data.paymentId" });
--   if (paymentEvent) await step.run("send-receipt", ...);
--   else await step.run("handle-timeout", ...);   // cancelPayment(...)

CREATE TABLE IF NOT EXISTS payments (id text PRIMARY KEY, user_id text, status text);
CREATE TABLE IF NOT EXISTS receipts (user_id text, payment jsonb, sent_at timestamptz DEFAULT now());

CREATE OR REPLACE FUNCTION payment_flow(ctx jsonb) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    payment jsonb := ctx->'event'->'data';
    payment_event jsonb;
BEGIN
    PERFORM jobs.step('process-payment',
        $step$ INSERT INTO payments VALUES ($1->>'paymentId', $1->>'userId', 'processing')
               ON CONFLICT (id) DO UPDATE SET status = 'processing' $step$,
        payment);

    payment_event := jobs.wait_for_event('wait-for-payment', 'app/payment.completed', '1h',
                                         match => 'data.paymentId');
    IF payment_event IS NOT NULL THEN
        PERFORM jobs.step('send-receipt',
            $step$ INSERT INTO receipts (user_id, payment) VALUES ($1->>'userId', $1->'payment');
                   UPDATE payments SET status = 'paid' WHERE id = $1->'payment'->>'paymentId' $step$,
            jsonb_build_object('userId', payment->>'userId', 'payment', payment_event->'data'));
        RETURN 'paid';
    END IF;
    PERFORM jobs.step('handle-timeout',
        $step$ UPDATE payments SET status = 'cancelled' WHERE id = $1->>'paymentId' $step$,
        payment);
    RETURN 'timed out';
END
$$;

SELECT jobs.create_function('payment-flow', 'payment_flow(jsonb)', '{"event": "app/payment.initiated"}');

-- Try it: start a payment, then (within the hour) tell that it completed.
SELECT jobs.send('app/payment.initiated', '{"paymentId": "pay-1", "userId": "u-1"}');
SELECT jobs.send('app/payment.completed', '{"paymentId": "pay-1", "amount": 4200}');
