-- The guide's parallel processing: three steps at the same time (Promise.all),
-- then one that uses their results.
--
--   const [thumbnail, webp, metadata] = await Promise.all([
--     step.run("create-thumbnail", ...), step.run("convert-to-webp", ...),
--     step.run("extract-metadata", ...)]);
--   await step.run("save-results", ...);   // db.image.update(...)

CREATE TABLE IF NOT EXISTS images (
    id text PRIMARY KEY, url text, thumbnail text, webp text, metadata jsonb);

CREATE OR REPLACE FUNCTION parallel_processing(ctx jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    image jsonb := ctx->'event'->'data';
    results jsonb;
BEGIN
    -- Each planned step runs on a free executor, in its own transaction, with its own retries.
    results := jobs.parallel(
        jobs.plan('create-thumbnail', $step$ SELECT jsonb_build_object('url', $1->>'imageUrl' || '?w=150') $step$, image),
        jobs.plan('convert-to-webp',  $step$ SELECT jsonb_build_object('url', regexp_replace($1->>'imageUrl', '\.\w+$', '.webp')) $step$, image),
        jobs.plan('extract-metadata', $step$ SELECT jsonb_build_object('width', 1920, 'height', 1080, 'format', 'jpeg') $step$, image));

    PERFORM jobs.step('save-results',
        $step$ UPDATE images SET thumbnail = $1->'results'->0->>'url', webp = $1->'results'->1->>'url',
                                 metadata = $1->'results'->2
               WHERE id = $1->>'imageId' $step$,
        jsonb_build_object('imageId', image->>'imageId', 'results', results));
    RETURN results;
END
$$;

SELECT jobs.create_function('parallel-processing', 'parallel_processing(jsonb)', '{"event": "app/image.uploaded"}');

-- Try it:
INSERT INTO images (id, url) VALUES ('img-1', 'https://cdn.example.com/photos/cat.jpg') ON CONFLICT DO NOTHING;
SELECT jobs.send('app/image.uploaded', '{"imageId": "img-1", "imageUrl": "https://cdn.example.com/photos/cat.jpg"}');
