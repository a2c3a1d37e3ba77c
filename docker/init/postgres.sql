-- Sample database for docker/compose.yaml: PostgreSQL 17, database `shop`.
--
-- The postgres image runs this once, on an empty data volume, as the superuser in the database
-- named by POSTGRES_DB (docker-entrypoint-initdb.d). It creates:
--   * `shop`: the application's role; it owns the tables and the publication;
--   * `cdc`:  the capture role, least privilege: LOGIN REPLICATION and SELECT on the tables,
--             no ownership. It cannot create publications, so the owner creates one (cdc_shop)
--             that the pipelines name with `publication: cdc_shop` (docs/postgres.md).
-- The passwords are for this local demo only.
\set ON_ERROR_STOP on

-- The application role. CREATE on the database lets it create publications.
CREATE ROLE shop LOGIN PASSWORD 'shop_demo';
GRANT CREATE ON DATABASE shop TO shop;
GRANT USAGE, CREATE ON SCHEMA public TO shop;

SET ROLE shop;

CREATE TABLE public.customers (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email      text        NOT NULL UNIQUE,
    name       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- FULL: updates and deletes carry the whole old row in `before` (docs/events.md). `orders`
-- keeps DEFAULT (its primary key): deletes carry the key, updates `before: null`.
ALTER TABLE public.customers REPLICA IDENTITY FULL;

CREATE TABLE public.orders (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id bigint        NOT NULL REFERENCES public.customers (id),
    status      text          NOT NULL DEFAULT 'new',
    total       numeric(12,2) NOT NULL,
    items       jsonb         NOT NULL DEFAULT '[]',
    updated_at  timestamptz   NOT NULL DEFAULT now()
);

INSERT INTO public.customers (email, name)
SELECT format('customer%s@example.com', i), format('Customer %s', i)
FROM generate_series(1, 5) AS i;

-- The publication cdc streams from, created by the tables' owner. cdc only checks a
-- publication it did not create: every listed table in it, all four operations published,
-- no row filter or column list.
CREATE PUBLICATION cdc_shop FOR TABLE public.customers, public.orders
    WITH (publish_via_partition_root = true);

RESET ROLE;

-- The capture role.
CREATE ROLE cdc LOGIN REPLICATION PASSWORD 'cdc_demo';
GRANT USAGE ON SCHEMA public TO cdc;
GRANT SELECT ON public.customers, public.orders TO cdc;
