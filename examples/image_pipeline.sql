-- The guide's image pipeline: download, then three sizes in parallel (each
-- uploaded to S3), then record the URLs.
--
--   const imageBuffer = await step.run("download-image", ...);
--   const [thumbnail, medium, large] = await Promise.all([
--     step.run("create-thumbnail", ...), step.run("create-medium", ...), step.run("create-large", ...)]);
--   await step.run("update-database", ...);
--   return { success: true, sizes: { thumbnail, medium, large } };

-- S3 and the images table. Resizing is simulated: a size is the smaller of
-- the original and the bounding box.
CREATE TABLE IF NOT EXISTS s3_objects (
    bucket text, key text, size int, content_type text, uploaded_at timestamptz DEFAULT now(),
    PRIMARY KEY (bucket, key));
CREATE TABLE IF NOT EXISTS pipeline_images (
    id text PRIMARY KEY, url text, width int, height int, bytes int,
    thumbnail_url text, medium_url text, large_url text, processed boolean DEFAULT false);

CREATE OR REPLACE FUNCTION resize_and_upload(image jsonb, folder text, box int, quality int) RETURNS jsonb
LANGUAGE sql AS $$
    INSERT INTO s3_objects (bucket, key, size, content_type)
    VALUES ('my-bucket', folder || '/' || (image->>'id') || '.jpg',
            least((image->>'bytes')::int, box * box * quality / 100 / 8), 'image/jpeg')
    ON CONFLICT (bucket, key) DO UPDATE SET size = excluded.size
    RETURNING jsonb_build_object('key', key, 'size', size)
$$;

CREATE OR REPLACE FUNCTION image_processing(ctx jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    image jsonb;
    sizes jsonb;
BEGIN
    image := jobs.step('download-image',
        $step$ SELECT to_jsonb(i) FROM pipeline_images i WHERE id = $1->>'imageId' $step$,
        ctx->'event'->'data');
    sizes := jobs.parallel(
        jobs.plan('create-thumbnail', 'SELECT resize_and_upload($1, ''thumbnails'', 150, 80)', image),
        jobs.plan('create-medium',    'SELECT resize_and_upload($1, ''medium'', 800, 85)', image),
        jobs.plan('create-large',     'SELECT resize_and_upload($1, ''large'', 1920, 90)', image));
    PERFORM jobs.step('update-database',
        $step$ UPDATE pipeline_images SET
                   thumbnail_url = 'https://cdn.example.com/' || ($1->'sizes'->0->>'key'),
                   medium_url    = 'https://cdn.example.com/' || ($1->'sizes'->1->>'key'),
                   large_url     = 'https://cdn.example.com/' || ($1->'sizes'->2->>'key'),
                   processed = true
               WHERE id = $1->>'imageId' $step$,
        jsonb_build_object('imageId', image->>'id', 'sizes', sizes));
    RETURN jsonb_build_object('success', true,
        'sizes', jsonb_build_object('thumbnail', sizes->0, 'medium', sizes->1, 'large', sizes->2));
END
$$;

SELECT jobs.create_function('image-processing', 'image_processing(jsonb)', '{"event": "app/image.uploaded"}');

-- Try it:
INSERT INTO pipeline_images (id, url, width, height, bytes)
VALUES ('img-42', 'https://uploads.example.com/img-42.jpg', 4000, 3000, 2400000) ON CONFLICT DO NOTHING;
SELECT jobs.send('app/image.uploaded', '{"imageId": "img-42", "imageUrl": "https://uploads.example.com/img-42.jpg"}');
