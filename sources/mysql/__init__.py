"""MySQL / MariaDB source: the binlog, read as a replica (see :mod:`.source`).

Layers: :mod:`.protocol` (binlog events, pure), :mod:`.rows` (row images, pure),
:mod:`.decoder` (messages -> change events, pure), :mod:`._wire` (the only module touching
PyMySQL's private API), :mod:`.source` and :mod:`.snapshot` (the I/O). PyMySQL is imported when
a pipeline starts, so ``cdc validate`` of a MySQL pipeline works without it.
"""

from .config import MySQLConfig
from .source import MySQLSource

__all__ = ["MySQLConfig", "MySQLSource"]
