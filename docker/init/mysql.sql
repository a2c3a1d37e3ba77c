-- Sample database for docker/compose.yaml: MySQL 8.4, database `shop`.
--
-- The mysql image runs this once, on an empty data volume, as root (docker-entrypoint-initdb.d),
-- after creating the database named by MYSQL_DATABASE. The server runs with the settings cdc
-- checks at start (see the `command:` of the mysql service): binlog_format=ROW,
-- binlog_row_image=FULL, binlog_row_metadata=FULL, GTIDs on. It creates:
--   * `shop`: the application's account (the writer), DML on shop.* only;
--   * `cdc`:  the capture account, least privilege: REPLICATION SLAVE (read the binlog),
--             REPLICATION CLIENT (SHOW BINARY LOGS / BINARY LOG STATUS) and SELECT on the tables.
-- The passwords are for this local demo only.

CREATE TABLE shop.customers (
    id         BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    email      VARCHAR(255)    NOT NULL UNIQUE,
    name       VARCHAR(255)    NOT NULL,
    created_at TIMESTAMP(6)    NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
);

CREATE TABLE shop.orders (
    id          BIGINT UNSIGNED                 NOT NULL AUTO_INCREMENT PRIMARY KEY,
    customer_id BIGINT UNSIGNED                 NOT NULL,
    status      ENUM('new', 'paid', 'shipped')  NOT NULL DEFAULT 'new',
    total       DECIMAL(12,2)                   NOT NULL,
    items       JSON                            NOT NULL,
    updated_at  DATETIME(6)                     NOT NULL
                DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    CONSTRAINT orders_customer FOREIGN KEY (customer_id) REFERENCES shop.customers (id)
);

INSERT INTO shop.customers (email, name) VALUES
    ('customer1@example.com', 'Customer 1'),
    ('customer2@example.com', 'Customer 2'),
    ('customer3@example.com', 'Customer 3'),
    ('customer4@example.com', 'Customer 4'),
    ('customer5@example.com', 'Customer 5');

-- The application's account.
CREATE USER 'shop'@'%' IDENTIFIED BY 'shop_demo';
GRANT SELECT, INSERT, UPDATE, DELETE ON shop.* TO 'shop'@'%';

-- The capture account. MySQL 8.4 authenticates it with caching_sha2_password, whose first
-- login needs TLS (or RSA); the server generates a certificate at first start and PyMySQL 1.2+
-- uses TLS whenever the server offers it.
CREATE USER 'cdc'@'%' IDENTIFIED BY 'cdc_demo';
GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO 'cdc'@'%';
GRANT SELECT ON shop.* TO 'cdc'@'%';
