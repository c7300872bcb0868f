-- What the application writes after 20251202020032_update_user_schema_final shipped:
-- new sign-ups through the external authorizer (no passwordHash, no emailVerified;
-- those columns no longer exist) and their first workflows.
-- The ids contain "post", which generated ids (digits only after the prefix) never do,
-- and the authorizerIds contain non-hex characters, so nothing can collide.

INSERT INTO "users" ("id", "email", "name", "authorizerId", "clientId", "createdAt", "updatedAt")
VALUES
    ('user_post_0001', 'new-signup-1@example.com', 'Ana Post',    'auth0|post-migration-0001', 'client_0000001', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC'),
    ('user_post_0002', 'new-signup-2@example.com', 'Bruno Post',  'auth0|post-migration-0002', 'client_0000001', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC'),
    ('user_post_0003', 'new-signup-3@example.com', NULL,          'auth0|post-migration-0003', NULL,             now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC'),
    ('user_post_0004', 'new-signup-4@example.com', 'Carla Post',  'auth0|post-migration-0004', 'client_0000001', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC'),
    ('user_post_0005', 'new-signup-5@example.com', 'Diego Post',  'auth0|post-migration-0005', NULL,             now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC');

INSERT INTO "workflows" ("id", "name", "status", "userId", "createdAt", "updatedAt")
VALUES
    ('wf_post_0001', 'Onboarding',       'active', 'user_post_0001', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC'),
    ('wf_post_0002', 'Invoice approval', 'draft',  'user_post_0001', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC'),
    ('wf_post_0003', 'Onboarding',       'active', 'user_post_0002', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC'),
    ('wf_post_0004', 'Weekly report',    'active', 'user_post_0004', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC');
