"""cdc: change data capture from PostgreSQL and MySQL/MariaDB to files, Kafka and webhooks."""

__version__ = "0.1.0"
