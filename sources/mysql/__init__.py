"""MySQL / MariaDB source: the binlog, read as a replica (see :mod:`.source`).

The PyMySQL and mysql-replication packages are imported when a pipeline starts, so
``cdc validate`` of a MySQL pipeline works without them.
"""

from .config import MySQLConfig
from .source import MySQLSource

__all__ = ["MySQLConfig", "MySQLSource"]
