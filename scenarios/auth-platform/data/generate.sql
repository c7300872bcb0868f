-- Synthetic production-like data for the schema BEFORE 20251202020032_update_user_schema_final.
--
-- Run with psycopg client-side binding and the named parameter users (the number of users):
--   clients   = users / 20 (at least one)
--   users     = users; nine in ten belong to a client; every user has an authorizerId
--               (so the NOT NULL migration succeeds); one in five has no passwordHash (SSO)
--   workflows = 0..4 per user, two on average
-- createdAt is spread over the past year, deterministically from the row number.
-- Timestamps are UTC, as Prisma writes TIMESTAMP(3) columns.
-- A literal percent sign would have to be doubled here; mod() is used instead.

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
           - make_interval(secs => mod(u::bigint * 7919, 363 * 86400)) AS created
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
           - make_interval(secs => mod(u::bigint * 7919, 363 * 86400))
           + make_interval(hours => 6 * k) AS created
) AS t;

ANALYZE "clients", "users", "workflows";
