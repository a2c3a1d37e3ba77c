#!/usr/bin/env bash
# Keeps changing the sample tables of docker/init/postgres.sql, one transaction per tick:
# a new order every tick, an order moving new -> paid -> shipped, a renamed customer every 5th
# tick, a shipped order deleted every 7th, a new customer every 10th. docker/compose.yaml runs
# it in the postgres image (which has psql) as the application role `shop`.
#
# Settings (environment): PGHOST, PGPORT, PGDATABASE, PGUSER, PGPASSWORD (libpq's own) and
# WRITER_INTERVAL_S (seconds between ticks, default 1).
set -uo pipefail

export PGHOST="${PGHOST:-postgres}" PGDATABASE="${PGDATABASE:-shop}" PGUSER="${PGUSER:-shop}"
interval="${WRITER_INTERVAL_S:-1}"

until pg_isready -q; do
    sleep 1
done
echo "postgres writer: changing ${PGDATABASE} on ${PGHOST} every ${interval}s"

n=0
while true; do
    n=$((n + 1))
    # -v n=...: psql interpolates :n in the script below (a quoted heredoc: no shell expansion).
    if ! psql -X -q -v ON_ERROR_STOP=1 -v n="$n" <<'SQL'
BEGIN;
INSERT INTO public.customers (email, name)
SELECT format('customer%s@example.com', 1000 + :n), format('Customer %s', 1000 + :n)
WHERE :n % 10 = 0;
INSERT INTO public.orders (customer_id, status, total, items)
SELECT id, 'new', round((random() * 200)::numeric, 2),
       jsonb_build_array(jsonb_build_object('sku', format('sku-%s', floor(random() * 50)),
                                            'qty', 1 + floor(random() * 3)))
FROM public.customers ORDER BY random() LIMIT 1;
UPDATE public.orders
SET status = CASE status WHEN 'new' THEN 'paid' ELSE 'shipped' END, updated_at = now()
WHERE id = (SELECT id FROM public.orders WHERE status <> 'shipped' ORDER BY random() LIMIT 1);
UPDATE public.customers SET name = format('Customer %s (tick %s)', id, :n)
WHERE :n % 5 = 0 AND id = (SELECT id FROM public.customers ORDER BY random() LIMIT 1);
DELETE FROM public.orders
WHERE :n % 7 = 0
  AND id = (SELECT min(id) FROM public.orders WHERE status = 'shipped');
COMMIT;
SQL
    then
        echo "postgres writer: tick ${n} failed; trying again" >&2
    fi
    sleep "$interval"
done
