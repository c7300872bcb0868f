-- Synthetic production-like data for the schema BEFORE 20251202020032_update_user_schema_final.
--
-- Run with psycopg client-side binding and the named parameter users (the number of users):
--   clients   = users / 20 (at least one)
--   users     = users; nine in ten belong to a client; every user has an authorizerId
--               (so the NOT NULL migration succeeds); one in five has no passwordHash (SSO)
--   workflows = 0..4 per user, two on average
-- createdAt is spread over the past year, deterministically from the row number.
-- Timestamps are UTC, as Prisma writes TIMESTAMP(3) columns.
--
-- Bulk load as the PostgreSQL manual advises ("Populating a Database"): the keys, indexes and
-- foreign keys of the three tables are set aside, the rows inserted, then the very same
-- definitions (read from the catalog, not retyped) are recreated, with their names; adding
-- the keys back checks every row, so the data is proven unique and consistent.
-- Percent signs are doubled because psycopg fills in the parameter on the client side.

CREATE TEMP TABLE generate_set_aside ON COMMIT DROP AS
WITH loaded AS (
    SELECT unnest(ARRAY['"clients"', '"users"', '"workflows"']::regclass[]) AS rel
)
SELECT CASE c.contype WHEN 'f' THEN 3 ELSE 1 END AS phase,  -- keys first, foreign keys last
       format('ALTER TABLE %%s DROP CONSTRAINT %%I', c.conrelid::regclass, c.conname) AS drop_ddl,
       format('ALTER TABLE %%s ADD CONSTRAINT %%I %%s', c.conrelid::regclass, c.conname,
              pg_get_constraintdef(c.oid)) AS restore_ddl
FROM pg_constraint AS c
WHERE c.contype IN ('p', 'u', 'f')
  AND (c.conrelid IN (SELECT rel FROM loaded) OR c.confrelid IN (SELECT rel FROM loaded))
UNION ALL
SELECT 2,
       format('DROP INDEX %%s', i.indexrelid::regclass),
       pg_get_indexdef(i.indexrelid)
FROM pg_index AS i
WHERE i.indrelid IN (SELECT rel FROM loaded)
  AND NOT EXISTS (SELECT FROM pg_constraint AS k WHERE k.conindid = i.indexrelid AND k.contype <> 'f');

DO $$
DECLARE ddl text;
BEGIN
    FOR ddl IN SELECT drop_ddl FROM generate_set_aside ORDER BY phase DESC LOOP
        EXECUTE ddl;
    END LOOP;
END $$;

INSERT INTO "clients" ("id", "name", "createdAt", "updatedAt")
SELECT
    'client_' || lpad(c::text, 7, '0'),
    'Client ' || c,
    t.created,
    t.created
FROM generate_series(1, greatest(%(users)s / 20, 1)) AS c
CROSS JOIN LATERAL (
    SELECT (now() AT TIME ZONE 'UTC') - interval '400 days' + make_interval(mins => c) AS created
) AS t;

INSERT INTO "users" (
    "id", "email", "name", "passwordHash", "emailVerified",
    "authorizerId", "clientId", "createdAt", "updatedAt"
)
SELECT
    'user_' || lpad(u::text, 9, '0'),
    'user' || u || '@example.com',
    CASE WHEN mod(u, 7) = 0 THEN NULL ELSE 'User ' || u END,
    CASE WHEN mod(u, 5) = 0 THEN NULL ELSE '$2b$10$' || md5(u::text) END,
    mod(u, 4) <> 0,
    'auth0|' || lpad(to_hex(u), 24, '0'),
    CASE WHEN mod(u, 10) = 0 THEN NULL
         ELSE 'client_' || lpad((1 + mod(u, greatest(%(users)s / 20, 1)))::text, 7, '0')
    END,
    t.created,
    t.created + make_interval(hours => mod(u, 48))
FROM generate_series(1, %(users)s) AS u
CROSS JOIN LATERAL (
    SELECT (now() AT TIME ZONE 'UTC') - interval '2 days'
           - make_interval(secs => mod(u::bigint * 1000003, 363 * 86400)) AS created
) AS t;

INSERT INTO "workflows" ("id", "name", "status", "userId", "createdAt", "updatedAt")
SELECT
    'wf_' || lpad(u::text, 9, '0') || '_' || k,
    'Workflow ' || k || ' of user ' || u,
    (ARRAY['draft', 'active', 'active', 'paused', 'archived'])[1 + mod(u + k, 5)],
    'user_' || lpad(u::text, 9, '0'),
    t.created,
    t.created
FROM generate_series(1, %(users)s) AS u
CROSS JOIN LATERAL generate_series(1, mod(u, 5)) AS k
CROSS JOIN LATERAL (
    SELECT (now() AT TIME ZONE 'UTC') - interval '2 days'
           - make_interval(secs => mod(u::bigint * 1000003, 363 * 86400))
           + make_interval(hours => 6 * k) AS created
) AS t;

DO $$
DECLARE ddl text;
BEGIN
    FOR ddl IN SELECT restore_ddl FROM generate_set_aside ORDER BY phase LOOP
        EXECUTE ddl;
    END LOOP;
END $$;

ANALYZE "clients", "users", "workflows";
