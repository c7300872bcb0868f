-- What makes 20251202020032_update_user_schema_final fail (rollback drill --migration-fails):
-- users still without an authorizerId when the migration sets it NOT NULL ("Null constraint
-- failed"). Run on the generated data, before the backup: the backup holds them too.
UPDATE "users" SET "authorizerId" = NULL
WHERE "id" IN (SELECT "id" FROM "users" WHERE "clientId" IS NULL ORDER BY "id" LIMIT 3);
