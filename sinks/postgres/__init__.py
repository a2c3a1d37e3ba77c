"""PostgreSQL read-model sink (``type: postgres``): the source's tables kept in another
PostgreSQL, each batch in one target transaction with the pipeline's position (exactly once).

The settings live in :mod:`sinks.postgres.config`, the type mapping in
:mod:`sinks.postgres.types` and the sink in :mod:`sinks.postgres.sink`; psycopg is imported
only when a sink connects, so validating a pipeline file needs no database client.
"""

from sinks.postgres.config import PostgresSinkConfig
from sinks.postgres.sink import PostgresSink

__all__ = ["PostgresSink", "PostgresSinkConfig"]
