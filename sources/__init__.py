"""Built-in sources (PostgreSQL, MySQL/MariaDB), registered as ``cdc.sources`` entry points."""
