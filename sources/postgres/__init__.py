"""PostgreSQL source: logical replication with pgoutput (see :mod:`.source`)."""

from .config import PostgresConfig
from .source import PostgresSource

__all__ = ["PostgresConfig", "PostgresSource"]
