-- The guide's image pipeline: download (jobs.fetch), then three sizes in
-- parallel (each uploaded to S3), then record the URLs. The uploads' host
-- must be in jobs.fetch_allowed_hosts.
--
--   const imageBuffer = await step.run("download-image", ...);
--   const [thumbnail, medium, large] = await Promise.all([
--     step.run("create-thumbnail", ...), step.run("create-medium", ...), step.run("create-large", ...)]);
--   await step.run("update-database", ...);
--   return { success: true, sizes: { thumbnail, medium, large } };

-- S3 and the images table. Resizing is simulated: a size is the smaller of
-- the downloaded image and the bounding box.
CREATE TABLE IF NOT EXISTS s3_objects (
    bucket text, key text, size int, content_type text, uploaded_at timestamptz DEFAULT now(),
    PRIMARY KEY (bucket, key));
CREATE TABLE IF NOT EXISTS pipeline_images (
    id text PRIMARY KEY, url text,
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
    download jsonb;
    image jsonb;
    sizes jsonb;
BEGIN
    download := jobs.fetch('download-image', ctx->'event'->'data'->>'imageUrl');
    image := jsonb_build_object('id', ctx->'event'->'data'->>'imageId',
                                'bytes', coalesce((download->'headers'->>'content-length')::int,
                                                  octet_length(download->>'body')),
                                'contentType', download->'headers'->>'content-type');
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

-- Where uploads are (a test points it at a local server).
CREATE TABLE IF NOT EXISTS app_settings (name text PRIMARY KEY, value text NOT NULL);
INSERT INTO app_settings VALUES ('uploads_url', 'https://uploads.example.com') ON CONFLICT DO NOTHING;

-- Try it:
INSERT INTO pipeline_images (id, url)
SELECT 'img-42', value || '/img-42.jpg' FROM app_settings WHERE name = 'uploads_url' ON CONFLICT DO NOTHING;
SELECT jobs.send('app/image.uploaded', jsonb_build_object('imageId', id, 'imageUrl', url))
FROM pipeline_images WHERE id = 'img-42';
