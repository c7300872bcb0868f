-- What the application writes after 20251215120000_consolidate_billing shipped: new customers
-- (country now required), their invoices (amount now a DOUBLE PRECISION) and lines (no note column),
-- an invoice paid and re-priced, and an invoice voided and deleted with its lines (ON DELETE CASCADE).
-- The ids contain "post", which generated ids never do.

INSERT INTO "customers" ("id", "email", "country", "createdAt", "updatedAt")
VALUES ('cus_post_0001', 'post-1@example.com', 'PE', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC'),
       ('cus_post_0002', 'post-2@example.com', 'UY', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC');

INSERT INTO "invoices" ("customerId", "status", "amount", "createdAt", "updatedAt")
VALUES ('cus_post_0001', 'open', 19.99, now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC'),
       ('cus_post_0002', 'open', 250.5, now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC');

INSERT INTO "invoice_lines" ("invoiceId", "lineNo", "description", "quantity")
SELECT id, 1, 'Post-migration item', 2 FROM "invoices" WHERE "customerId" LIKE 'cus_post_%';

UPDATE "invoices" SET "status" = 'paid', "amount" = 42.5, "updatedAt" = now() AT TIME ZONE 'UTC'
WHERE id = (SELECT min(id) FROM "invoices");

DELETE FROM "invoices" WHERE id = (SELECT min(id) FROM "invoices" WHERE id > 3 AND mod(id, 4) = 3);
