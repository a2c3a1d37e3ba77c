#!/usr/bin/env bash
# Keeps changing the sample tables of docker/init/mysql.sql, one transaction per tick: a new
# order every tick, an order moving new -> paid -> shipped, a renamed customer every 5th tick,
# a shipped order deleted every 7th, a new customer every 10th. docker/compose.yaml runs it in
# the mysql image (which has the mysql client) as the application account `shop`.
#
# Settings (environment): MYSQL_HOST, MYSQL_TCP_PORT, MYSQL_DATABASE, WRITER_USER,
# WRITER_PASSWORD and WRITER_INTERVAL_S (seconds between ticks, default 1).
set -uo pipefail

host="${MYSQL_HOST:-mysql}"
port="${MYSQL_TCP_PORT:-3306}"
database="${MYSQL_DATABASE:-shop}"
interval="${WRITER_INTERVAL_S:-1}"

# The password goes into an option file, not onto the command line.
cnf="$(mktemp)"
trap 'rm -f "$cnf"' EXIT
printf '[client]\nhost=%s\nport=%s\nuser=%s\npassword=%s\ndatabase=%s\n' \
    "$host" "$port" "${WRITER_USER:-shop}" "${WRITER_PASSWORD:-shop_demo}" "$database" >"$cnf"

until mysql --defaults-extra-file="$cnf" -e 'SELECT 1' >/dev/null 2>&1; do
    sleep 1
done
echo "mysql writer: changing ${database} on ${host} every ${interval}s"

n=0
while true; do
    n=$((n + 1))
    # An unquoted heredoc: the shell fills in ${n}; the SQL has no other $.
    if ! mysql --defaults-extra-file="$cnf" <<SQL
START TRANSACTION;
INSERT INTO customers (email, name)
SELECT CONCAT('customer', 1000 + ${n}, '@example.com'), CONCAT('Customer ', 1000 + ${n})
FROM DUAL WHERE ${n} % 10 = 0;
INSERT INTO orders (customer_id, status, total, items)
SELECT id, 'new', ROUND(RAND() * 200, 2),
       JSON_ARRAY(JSON_OBJECT('sku', CONCAT('sku-', FLOOR(RAND() * 50)), 'qty', 1 + FLOOR(RAND() * 3)))
FROM customers ORDER BY RAND() LIMIT 1;
UPDATE orders SET status = IF(status = 'new', 'paid', 'shipped')
WHERE status <> 'shipped' ORDER BY RAND() LIMIT 1;
UPDATE customers SET name = CONCAT('Customer ', id, ' (tick ', ${n}, ')')
WHERE ${n} % 5 = 0 ORDER BY RAND() LIMIT 1;
DELETE FROM orders WHERE ${n} % 7 = 0 AND status = 'shipped' ORDER BY id LIMIT 1;
COMMIT;
SQL
    then
        echo "mysql writer: tick ${n} failed; trying again" >&2
    fi
    sleep "$interval"
done
