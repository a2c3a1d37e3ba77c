"""The MariaDB fixtures live in tests/mariadb_fixtures.py (registered by tests/conftest.py for
every test module); ``MyDB`` is importable from here too."""

from tests.mariadb_fixtures import MyDB

__all__ = ["MyDB"]
