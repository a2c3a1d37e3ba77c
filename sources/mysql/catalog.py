"""What the MySQL source asks the server outside the binlog stream (PyMySQL, autocommit).

Everything here runs at start (the checks, the start position), once per schema version (the
MariaDB JSON columns of a table), for a ``TRUNCATE`` of a table the stream has not described
yet, or from the supervisor's poll (the server's own position). Nothing runs per row event.

The checks raise :class:`cdc.errors.FatalError` with one clear message per problem, naming the
setting or grant and the statement that fixes it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from cdc import names
from cdc.errors import FatalError, FatalSourceError, Kind, RetriableSourceError

#: server error codes
ER_DBACCESS_DENIED = 1044
ER_ACCESS_DENIED = 1045
ER_TABLEACCESS_DENIED = 1142
ER_NO_SUCH_TABLE = 1146
ER_SPECIFIC_ACCESS_DENIED = 1227
ER_MASTER_FATAL_READING_BINLOG = 1236
ER_BAD_DB = 1049
ER_SLAVE_SAME_ID = 4052  # MariaDB: "A slave with the same server_uuid/server_id is already connected"
CLIENT_ERRORS = range(2000, 3000)  # CR_* client-side errors: connection refused, lost, ...

_DSN_PARAMS = {
    "connect_timeout": int,
    "read_timeout": int,
    "write_timeout": int,
    "ssl_ca": str,
    "ssl_cert": str,
    "ssl_key": str,
    "ssl_verify_cert": lambda v: v.lower() in ("1", "true", "yes", "on"),
    "ssl_verify_identity": lambda v: v.lower() in ("1", "true", "yes", "on"),
    "ssl_disabled": lambda v: v.lower() in ("1", "true", "yes", "on"),
    "unix_socket": str,
}


def connection_settings(dsn: str) -> dict[str, Any]:
    """PyMySQL ``connect()`` keyword arguments from ``mysql://user:password@host:port[?...]``.

    Query parameters: ``connect_timeout``, ``read_timeout``, ``write_timeout``, ``ssl_ca``,
    ``ssl_cert``, ``ssl_key``, ``ssl_verify_cert``, ``ssl_verify_identity``, ``ssl_disabled``,
    ``unix_socket``. A database in the path is ignored (tables are named ``database.table``).
    """
    try:
        parts = urlsplit(dsn)
        port = parts.port
    except ValueError as exc:
        raise FatalError(f"invalid MySQL DSN: {exc}", kind=Kind.CONFIG) from exc
    if parts.scheme not in ("mysql", "mariadb"):
        raise FatalError(
            f"invalid MySQL DSN: scheme {parts.scheme!r}, expected mysql://user:password@host:3306",
            kind=Kind.CONFIG,
        )
    settings: dict[str, Any] = {
        "host": parts.hostname or "127.0.0.1",
        "port": port or 3306,
        "user": unquote(parts.username or ""),
        "password": unquote(parts.password or ""),
        "charset": "utf8mb4",
        "connect_timeout": 10,
        "autocommit": True,
    }
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        conv = _DSN_PARAMS.get(key)
        if conv is None:
            raise FatalError(
                f"invalid MySQL DSN: unknown parameter {key!r} (known: {', '.join(sorted(_DSN_PARAMS))})",
                kind=Kind.CONFIG,
            )
        try:
            converted = conv(value)  # type: ignore[operator]
        except ValueError as exc:
            raise FatalError(f"invalid MySQL DSN: {key}={value!r}: {exc}", kind=Kind.CONFIG) from exc
        # PyMySQL takes ssl_ca, ssl_verify_cert, ... as arguments of their own (its ``ssl``
        # dict would silently ignore verify_cert / verify_identity)
        settings[key] = converted
    return settings


def connect(settings: dict[str, Any], display: str) -> Any:
    """A PyMySQL connection; errors become FatalError (refused login) or RetriableError."""
    import pymysql

    try:
        return pymysql.connect(**settings)
    except pymysql.err.OperationalError as exc:
        code = exc.args[0] if exc.args else 0
        if code in (ER_ACCESS_DENIED, ER_DBACCESS_DENIED):
            raise FatalSourceError(
                f"MySQL refused the login to {display}: {exc.args[1] if len(exc.args) > 1 else exc}",
                kind=Kind.SOURCE_AUTH,
            ) from exc
        raise RetriableSourceError(f"cannot connect to {display}: {exc}") from exc
    except pymysql.err.MySQLError as exc:
        raise RetriableSourceError(f"cannot connect to {display}: {exc}") from exc


def error_code(exc: BaseException) -> int:
    args = getattr(exc, "args", ())
    return int(args[0]) if args and isinstance(args[0], int) else 0


def error_text(exc: BaseException) -> str:
    args: tuple[Any, ...] = getattr(exc, "args", ())
    if len(args) > 1:
        return str(args[1])
    return str(exc)


@dataclass
class ServerFacts:
    version: str
    flavor: str  # "mariadb" | "mysql"
    version_tuple: tuple[int, ...]
    server_id: int
    variables: dict[str, str] = field(default_factory=dict)

    @property
    def mariadb(self) -> bool:
        return self.flavor == "mariadb"

    def var(self, name: str) -> str | None:
        return self.variables.get(name)


_VARIABLES = (
    "version",
    "version_comment",
    "server_id",
    "log_bin",
    "binlog_format",
    "binlog_row_image",
    "binlog_row_metadata",
    "binlog_row_value_options",
    "gtid_mode",
    "gtid_strict_mode",
    "gtid_domain_id",
    "binlog_checksum",
)


def server_facts(conn: Any) -> ServerFacts:
    with conn.cursor() as cur:
        placeholders = ", ".join(["%s"] * len(_VARIABLES))
        cur.execute(f"SHOW GLOBAL VARIABLES WHERE Variable_name IN ({placeholders})", _VARIABLES)
        variables = {str(name).lower(): "" if value is None else str(value) for name, value in cur.fetchall()}
    version = variables.get("version", "")
    flavor = "mariadb" if "mariadb" in (version + variables.get("version_comment", "")).lower() else "mysql"
    numbers = re.match(r"(\d+)\.(\d+)\.(\d+)", version)
    version_tuple = tuple(int(x) for x in numbers.groups()) if numbers else (0, 0, 0)
    return ServerFacts(version, flavor, version_tuple, int(variables.get("server_id") or 0), variables)


def check_server(facts: ServerFacts) -> None:
    """The binlog settings cdc needs; one FatalError naming every setting that is wrong."""
    problems: list[str] = []
    if facts.mariadb and facts.version_tuple < (10, 5):
        problems.append(f"MariaDB {facts.version} is too old: cdc needs MariaDB 10.5 or newer (binlog_row_metadata)")
    if not facts.mariadb and facts.version_tuple < (8, 0, 14):
        problems.append(f"MySQL {facts.version} is too old: cdc needs MySQL 8.0.14 or newer (binlog_row_metadata)")
    if (facts.var("log_bin") or "").upper() not in ("ON", "1"):
        problems.append(
            "binary logging is off (log_bin=OFF): start the server with log_bin enabled "
            "(MariaDB: --log-bin; MySQL 8 enables it by default unless --skip-log-bin / --disable-log-bin)"
        )
    fmt = (facts.var("binlog_format") or "").upper()
    if fmt != "ROW":
        problems.append(
            f"binlog_format is {fmt or 'unset'}, cdc needs ROW: run SET GLOBAL binlog_format = 'ROW' "
            "and set binlog_format = ROW in the server's configuration (sessions opened before keep "
            "their old format until they reconnect)"
        )
    image = (facts.var("binlog_row_image") or "").upper()
    if image != "FULL":
        problems.append(
            f"binlog_row_image is {image or 'unset'}, cdc needs FULL (whole rows before and after "
            "each change): run SET GLOBAL binlog_row_image = 'FULL' and set binlog_row_image = FULL "
            "in the server's configuration"
        )
    meta = facts.var("binlog_row_metadata")
    if meta is None:
        problems.append(
            "the server has no binlog_row_metadata setting (MySQL 8.0.14+ / MariaDB 10.5+ needed): "
            "cdc reads column names and types from the binlog itself"
        )
    elif meta.upper() != "FULL":
        problems.append(
            f"binlog_row_metadata is {meta or 'unset'}, cdc needs FULL (column names, types and the "
            "primary key in every TABLE_MAP event): run SET GLOBAL binlog_row_metadata = 'FULL' and "
            "set binlog_row_metadata = FULL in the server's configuration"
        )
    if not facts.mariadb:
        options = facts.var("binlog_row_value_options")
        if options:
            problems.append(
                f"binlog_row_value_options is {options!r}, cdc needs it empty (PARTIAL_JSON logs "
                "only the changed parts of JSON values): run SET GLOBAL binlog_row_value_options = ''"
            )
    if problems:
        raise FatalSourceError(
            "the MySQL/MariaDB server is not set up for change data capture: " + "; ".join(problems),
            kind=Kind.SOURCE_CONFIG,
        )


def check_grants(conn: Any, facts: ServerFacts, tables: list[str]) -> None:
    """REPLICATION SLAVE (from SHOW GRANTS), REPLICATION CLIENT (SHOW BINARY LOGS works) and
    SELECT on every table (a zero-row SELECT works). One FatalError naming what is missing."""
    import pymysql

    problems: list[str] = []
    grants: list[str] = []
    with conn.cursor() as cur:
        cur.execute("SHOW GRANTS")
        grants = [str(row[0]) for row in cur.fetchall()]
        cur.execute("SELECT CURRENT_USER()")
        row = cur.fetchone()
        user = str(row[0]) if row else "?"
    global_privs = " ".join(
        g.split(" ON ", 1)[0].upper() for g in grants if re.search(r"\bON \*\.\* TO\b", g, re.IGNORECASE)
    )
    has_roles = any(not re.search(r"\bON\b", g, re.IGNORECASE) for g in grants)
    missing_slave = "ALL PRIVILEGES" not in global_privs and "REPLICATION SLAVE" not in global_privs
    if missing_slave and not has_roles:
        problems.append(
            f"the user {user} lacks REPLICATION SLAVE (needed to read the binlog): "
            f"GRANT REPLICATION SLAVE ON *.* TO {_account(user)}"
        )
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW BINARY LOGS")
            cur.fetchall()
    except pymysql.err.MySQLError as exc:
        if error_code(exc) == ER_SPECIFIC_ACCESS_DENIED:
            what = "REPLICATION CLIENT (MariaDB 10.5+: BINLOG MONITOR)" if facts.mariadb else "REPLICATION CLIENT"
            problems.append(
                f"the user {user} lacks {what} (needed to list binary logs and read the current "
                f"position): GRANT REPLICATION CLIENT ON *.* TO {_account(user)}"
            )
        else:
            raise
    for table in tables:
        db, name = names.split(table)
        try:
            with conn.cursor() as cur:
                cur.execute(f"SELECT 1 FROM {quote_ident(db)}.{quote_ident(name)} LIMIT 0")
                cur.fetchall()
        except pymysql.err.MySQLError as exc:
            code = error_code(exc)
            if code in (ER_TABLEACCESS_DENIED, ER_DBACCESS_DENIED):
                problems.append(
                    f"the user {user} lacks SELECT on {table}: GRANT SELECT ON "
                    f"{quote_ident(db)}.{quote_ident(name)} TO {_account(user)}"
                )
            elif code in (ER_NO_SUCH_TABLE, ER_BAD_DB):
                problems.append(f"the table {table} does not exist (or is not visible to {user})")
            else:
                raise
    if problems:
        raise FatalSourceError("; ".join(problems), kind=Kind.SOURCE_GRANTS)


def _account(user: str) -> str:
    name, _, host = user.rpartition("@")
    return f"'{name}'@'{host}'" if name else f"'{user}'"


def quote_ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def replica_hosts(conn: Any, facts: ServerFacts) -> list[tuple[int, str]] | None:
    """(server id, reported host) of every replica connected to the server, or None when the
    user may not list them (MariaDB 10.5+ needs REPLICATION MASTER ADMIN for it)."""
    import pymysql

    statements = ["SHOW SLAVE HOSTS"] if facts.mariadb else ["SHOW REPLICAS", "SHOW SLAVE HOSTS"]
    for statement in statements:
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
                rows = cur.fetchall()
                names = [d[0].lower() for d in cur.description or ()]
        except pymysql.err.MySQLError as exc:
            code = error_code(exc)
            if code == ER_SPECIFIC_ACCESS_DENIED:
                return None
            if code == 1064 and statement != statements[-1]:  # syntax: an older MySQL
                continue
            raise
        id_col = names.index("server_id") if "server_id" in names else 0
        host_col = names.index("host") if "host" in names else 1
        return [(int(r[id_col]), str(r[host_col] or "")) for r in rows]
    return None


def master_status(conn: Any, facts: ServerFacts) -> tuple[str, int, str]:
    """The server's current binlog file, position and executed GTID set (MySQL; '' on MariaDB)."""
    import pymysql

    statements = ["SHOW MASTER STATUS"]
    if not facts.mariadb:
        statements.insert(0, "SHOW BINARY LOG STATUS")
    last: Exception | None = None
    for statement in statements:
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
                row = cur.fetchone()
                names = [d[0].lower() for d in cur.description or ()]
        except pymysql.err.ProgrammingError as exc:
            last = exc
            continue
        if row is None:
            raise FatalSourceError(
                "the server reports no binary log (SHOW MASTER STATUS is empty): enable log_bin",
                kind=Kind.SOURCE_CONFIG,
            )
        gtids = ""
        if "executed_gtid_set" in names:
            gtids = str(row[names.index("executed_gtid_set")] or "")
        return str(row[0]), int(row[1]), gtids.replace("\n", "")
    raise FatalSourceError(f"cannot read the server's binlog position: {last}")


def binary_logs(conn: Any) -> list[str]:
    with conn.cursor() as cur:
        cur.execute("SHOW BINARY LOGS")
        return [str(r[0]) for r in cur.fetchall()]


def mariadb_gtid_at(conn: Any, file: str, pos: int) -> str:
    """MariaDB's GTID state at binlog coordinates (``BINLOG_GTID_POS``)."""
    with conn.cursor() as cur:
        cur.execute("SELECT BINLOG_GTID_POS(%s, %s)", (file, pos))
        row = cur.fetchone()
    if row is None or row[0] is None:
        raise FatalSourceError(
            f"MariaDB cannot tell the GTID state at {file}:{pos} (BINLOG_GTID_POS returned NULL: "
            "the file is gone or the position is not a transaction boundary)",
        )
    return str(row[0])


_JSON_CHECK_RE = re.compile(r"^\s*json_valid\(\s*`((?:[^`]|``)+)`\s*\)\s*$", re.IGNORECASE)


def mariadb_json_columns(conn: Any, schema: str, table: str) -> frozenset[str]:
    """Columns of a MariaDB table that are JSON (LONGTEXT with a ``json_valid(col)`` check)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS "
            "WHERE CONSTRAINT_SCHEMA = %s AND TABLE_NAME = %s",
            (schema, table),
        )
        found = set()
        for (clause,) in cur.fetchall():
            m = _JSON_CHECK_RE.match(str(clause))
            if m:
                found.add(m.group(1).replace("``", "`"))
    return frozenset(found)


def mariadb_plugin_columns(conn: Any, schema: str, table: str) -> dict[str, str]:
    """Columns of a MariaDB table whose type is a data type plugin the binlog shows as
    ``binary(n)``: column name -> ``uuid`` / ``inet4`` / ``inet6``."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s AND DATA_TYPE IN ('uuid', 'inet4', 'inet6')",
            (schema, table),
        )
        return {_str(name): _str(dt).lower() for name, dt in cur.fetchall()}


def column_names(conn: Any, schema: str, table: str) -> frozenset[str]:
    """The table's column names now."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
            (schema, table),
        )
        return frozenset(_str(r[0]) for r in cur.fetchall())


def _str(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes | bytearray) else str(value)


_DISPLAY_WIDTH_RE = re.compile(r"^(tinyint|smallint|mediumint|int|bigint|year)\(\d+\)")


def catalog_table(conn: Any, schema: str, table: str, json_columns: frozenset[str]) -> tuple[list[tuple[str, str, bool]], list[str]]:
    """A table's columns (name, type as the binlog would name it, nullable) and primary key from
    information_schema, for a ``TRUNCATE`` of a table the stream has not described yet."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
            (schema, table),
        )
        columns = []
        for name, ctype, nullable in cur.fetchall():
            text = str(ctype).lower().replace(" zerofill", "")
            text = _DISPLAY_WIDTH_RE.sub(r"\1", text)
            if str(name) in json_columns:
                text = "json"
            columns.append((str(name), text, str(nullable).upper() == "YES"))
        cur.execute(
            "SELECT COLUMN_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = %s "
            "AND TABLE_NAME = %s AND INDEX_NAME = 'PRIMARY' ORDER BY SEQ_IN_INDEX",
            (schema, table),
        )
        key = [str(r[0]) for r in cur.fetchall()]
    return columns, key
