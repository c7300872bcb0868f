-- Synthetic data for the schema BEFORE 20251215120000_consolidate_billing.
-- Run with psycopg client-side binding and the named parameter users (the number of customers):
--   customers     = users; every one has a country (so the NOT NULL migration succeeds)
--   invoices      = 2 per customer, amounts with cents
--   invoice_lines = 0..3 per invoice (composite key invoiceId, lineNo); two in three carry a note
--   coupons       = one per 3 customers, percent or fixed (SERIAL ids)
-- Timestamps are UTC, as Prisma writes TIMESTAMP(3) columns.

INSERT INTO "customers" ("id", "email", "country", "createdAt", "updatedAt")
SELECT 'cus_' || lpad(c::text, 8, '0'), 'billing' || c || '@example.com',
       (ARRAY['ES', 'MX', 'AR', 'CL', 'CO'])[1 + mod(c, 5)],
       (now() AT TIME ZONE 'UTC') - make_interval(days => 1 + mod(c, 300)),
       (now() AT TIME ZONE 'UTC') - make_interval(days => 1 + mod(c, 300))
FROM generate_series(1, %(users)s) AS c;

INSERT INTO "invoices" ("customerId", "status", "amount", "createdAt", "updatedAt")
SELECT 'cus_' || lpad(c::text, 8, '0'),
       (ARRAY['draft', 'open', 'paid', 'paid', 'void']::"InvoiceStatus"[])[1 + mod(c + k, 5)],
       round((c * 37 + k * 11) / 7.0, 2),
       (now() AT TIME ZONE 'UTC') - make_interval(days => mod(c, 200), hours => k),
       (now() AT TIME ZONE 'UTC') - make_interval(days => mod(c, 200), hours => k)
FROM generate_series(1, %(users)s) AS c CROSS JOIN generate_series(1, 2) AS k
ORDER BY c, k;

INSERT INTO "invoice_lines" ("invoiceId", "lineNo", "description", "quantity", "note")
SELECT i.id, n, 'Item ' || n || ' of invoice ' || i.id, 1 + mod(i.id + n, 4),
       CASE WHEN mod(i.id + n, 3) = 0 THEN NULL ELSE 'note ' || md5(i.id::text || '/' || n::text) END
FROM "invoices" i CROSS JOIN LATERAL generate_series(1, mod(i.id, 4)) AS n;

INSERT INTO "coupons" ("code", "kind", "value", "customerId", "createdAt")
SELECT 'CODE' || c,
       (ARRAY['percent', 'fixed']::"CouponKind"[])[1 + mod(c, 2)], 5 + mod(c, 30),
       CASE WHEN mod(c, 4) = 0 THEN NULL ELSE 'cus_' || lpad(c::text, 8, '0') END,
       (now() AT TIME ZONE 'UTC') - make_interval(days => mod(c, 90))
FROM generate_series(1, %(users)s, 3) AS c;

ANALYZE "customers", "invoices", "invoice_lines", "coupons";
