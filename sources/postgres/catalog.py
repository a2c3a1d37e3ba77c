"""Catalog work on a regular (non-replication) connection.

Everything the PostgreSQL source asks the database outside the replication stream lives here:
the start-up checks (server settings, grants, tables, replica identities), the publication and
slot management, the type and key lookups made once per Relation message (never per row;
:func:`relation_facts` gathers them for the pure :mod:`.relations`), and the monitoring
queries (retained WAL, unused slots). Each check that fails raises one
:class:`FatalError` saying what is wrong and the statement that fixes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cdc import names
from cdc.errors import FatalError, FatalSourceError, Kind, RetriableSourceError

from .relations import RelationFacts, TypeFacts, typmods_wanted

#: marks a publication created (and therefore managed) by cdc
PUBLICATION_MARK = "managed by cdc"
MIN_SERVER_VERSION = 140000

#: session settings that make pgoutput's text output exact and predictable
SESSION_OPTIONS = (
    "-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=iso_8601 -c extra_float_digits=3 "
    "-c bytea_output=hex -c client_encoding=UTF8"
)

# SQLSTATE classes that no retry can fix
_FATAL_CONNECT_STATES = ("28000", "28P01", "3D000", "42501")


def connect_error(exc: psycopg.Error, what: str, dsn_display: str) -> Exception:
    """Map a connection failure to Fatal (auth, missing database) or Retriable (the rest)."""
    state = getattr(exc, "sqlstate", None)
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
    # libpq reports a failed connection attempt as text only (there is no result, so no
    # SQLSTATE): the refused password is the one case told by its text
    if state in _FATAL_CONNECT_STATES or "password authentication failed" in message:
        return FatalSourceError(
            f"cannot connect to {dsn_display} for {what}: {message}; check the DSN's user, "
            "password and database",
            kind=Kind.SOURCE_AUTH,
        )
    return RetriableSourceError(
        f"cannot connect to {dsn_display} for {what}: {message}"
    )


def conninfo(dsn: str, dsn_display: str, pipeline: str, **extra: str) -> str:
    """The connection string of the pipeline's sessions: the DSN plus the session settings
    that make values exact (:data:`SESSION_OPTIONS`), timeouts, keepalives and a name."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise FatalSourceError(f"invalid PostgreSQL DSN {dsn_display}: {exc}", kind=Kind.CONFIG) from exc
    options = params.get("options")
    params["options"] = f"{options} {SESSION_OPTIONS}" if options else SESSION_OPTIONS
    params.setdefault("connect_timeout", "10")
    params.setdefault("application_name", f"cdc_{pipeline}")
    params.setdefault("keepalives", "1")
    params.setdefault("keepalives_idle", "30")
    params.update(extra)
    return make_conninfo("", **params)


def connect(dsn: str, dsn_display: str, pipeline: str) -> psycopg.Connection[Any]:
    """A regular autocommit connection for catalog queries (errors: :func:`connect_error`)."""
    info = conninfo(dsn, dsn_display, pipeline)
    try:
        return psycopg.connect(info, autocommit=True)
    except psycopg.Error as exc:
        raise connect_error(exc, "catalog queries", dsn_display) from exc


def split_table(name: str) -> tuple[str, str]:
    """The raw parts of a (canonical or quoted) table name; see :mod:`cdc.names`."""
    return names.split(name)


def qualified(name: str) -> sql.Composed:
    schema, table = split_table(name)
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))


@dataclass(frozen=True)
class ServerFacts:
    version: int
    wal_level: str
    database: str
    user: str
    superuser: bool
    replication: bool
    encoding: str


def server_facts(conn: psycopg.Connection[Any]) -> ServerFacts:
    row = conn.execute(
        "SELECT current_setting('server_version_num')::int, current_setting('wal_level'), "
        "current_database(), current_user, r.rolsuper, r.rolreplication, "
        "pg_encoding_to_char(d.encoding) "
        "FROM pg_roles r, pg_database d WHERE r.rolname = current_user "
        "AND d.datname = current_database()"
    ).fetchone()
    assert row is not None
    return ServerFacts(*row)


def check_server(facts: ServerFacts) -> None:
    """At start: raise the first of :func:`server_problems`."""
    problems = server_problems(facts)
    if problems:
        raise problems[0]


def server_problems(facts: ServerFacts) -> list[FatalError]:
    """Version, ``wal_level``, REPLICATION and encoding: each problem with its fix (used at
    start and by ``cdc check``)."""
    problems: list[FatalError] = []
    if facts.version < MIN_SERVER_VERSION:
        problems.append(FatalSourceError(
            f"PostgreSQL {facts.version // 10000} is not supported; cdc needs PostgreSQL 14 or newer",
            kind=Kind.SOURCE_CONFIG,
        ))
    if facts.wal_level != "logical":
        problems.append(FatalSourceError(
            f"the server's wal_level is {facts.wal_level!r}, logical decoding needs 'logical': "
            "set `wal_level = logical` in postgresql.conf (or ALTER SYSTEM SET wal_level = "
            "logical) and restart PostgreSQL",
            kind=Kind.SOURCE_CONFIG,
        ))
    if not (facts.superuser or facts.replication):
        problems.append(FatalSourceError(
            f"the role {facts.user!r} lacks the REPLICATION attribute needed to stream changes: "
            f'run `ALTER ROLE "{facts.user}" WITH REPLICATION` as a superuser',
            kind=Kind.SOURCE_PERMISSION,
        ))
    if facts.encoding != "UTF8":
        problems.append(FatalSourceError(
            f"the database encoding is {facts.encoding}; cdc needs a UTF8 database so that text "
            "values are exact",
            kind=Kind.SOURCE_CONFIG,
        ))
    return problems


@dataclass(frozen=True)
class TableFacts:
    name: str
    oid: int
    relkind: str
    replident: str
    has_pk: bool
    is_partition: bool
    ancestors: tuple[str, ...]


def check_tables(
    conn: psycopg.Connection[Any], tables: Sequence[str], renamed: dict[str, str] | None = None
) -> dict[str, TableFacts]:
    """At start: existence, SELECT grants, partitions and replica identities of the listed
    tables (:func:`table_problems`). A table that cannot be used raises its own error; the
    replica identity problems are raised together."""
    facts, problems = table_problems(conn, tables, renamed)
    if problems:
        identity = [p for p in problems if _is_identity_problem(p)]
        others = [p for p in problems if not _is_identity_problem(p)]
        if others:
            raise others[0]
        raise FatalSourceError("; ".join(str(p) for p in identity), kind=Kind.SOURCE_CONFIG)
    return facts


def table_problems(
    conn: psycopg.Connection[Any], tables: Sequence[str], renamed: dict[str, str] | None = None
) -> tuple[dict[str, TableFacts], list[FatalError]]:
    """Every problem of the listed tables, each with its fix (start and ``cdc check``):
    existence, schema USAGE, SELECT, partitions listed twice, replica identities.
    ``renamed``: listed tables the pipeline saw renamed (old -> new), named in the error."""
    facts: dict[str, TableFacts] = {}
    problems: list[FatalError] = []
    role = conn.info.user
    for name in tables:
        schema, table = split_table(name)
        row = conn.execute(
            "SELECT c.oid, c.relkind::text, c.relreplident::text, c.relispartition, "
            "EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary), "
            "has_table_privilege(c.oid, 'SELECT'), has_schema_privilege(n.oid, 'USAGE') "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s",
            (schema, table),
        ).fetchone()
        if row is None and renamed and name in renamed:
            problems.append(FatalSourceError(
                f"table {name} does not exist: the pipeline followed it when it was renamed to "
                f"{renamed[name]} (every change was delivered, the later ones under the new "
                f"name); list {renamed[name]} in `tables` instead of {name} and start again",
                kind=Kind.SOURCE_CONFIG,
                table=name,
            ))
            continue
        if row is None:
            problems.append(FatalSourceError(
                f"table {name} does not exist in this database (names are exact catalog names: "
                "schema.table, case-sensitive; quote a name with a dot, a space or a quote); "
                "create it or remove it from `tables`",
                kind=Kind.SOURCE_CONFIG,
                table=name,
            ))
            continue
        oid, relkind, replident, is_partition, has_pk, can_select, can_use = row
        if relkind not in ("r", "p"):
            problems.append(FatalSourceError(
                f"{name} is not a table (relkind {relkind!r}); only tables and partitioned "
                "tables can be captured",
                kind=Kind.SOURCE_CONFIG,
                table=name,
            ))
            continue
        if not can_use:
            problems.append(FatalSourceError(
                f"the connecting role lacks USAGE on schema {schema}: run `GRANT USAGE ON SCHEMA "
                f"{sql.Identifier(schema).as_string(conn)} TO {sql.Identifier(role).as_string(conn)}`",
                kind=Kind.SOURCE_PERMISSION,
                table=name,
            ))
        if not can_select:
            problems.append(FatalSourceError(
                f"the connecting role lacks SELECT on {name}: run `GRANT SELECT ON {name} TO "
                f"{sql.Identifier(role).as_string(conn)}`",
                kind=Kind.SOURCE_PERMISSION,
                table=name,
            ))
        ancestors: tuple[str, ...] = ()
        if is_partition:
            ancestors = tuple(
                names.join(r[0], r[1])
                for r in conn.execute(
                    "SELECT n.nspname, c.relname FROM pg_partition_ancestors(%s) a "
                    "JOIN pg_class c ON c.oid = a.relid JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE a.relid <> %s",
                    (oid, oid),
                ).fetchall()
            )
        facts[name] = TableFacts(name, oid, relkind, replident, has_pk, is_partition, ancestors)
    for f in facts.values():
        listed = [a for a in f.ancestors if a in facts]
        if listed:
            problems.append(FatalSourceError(
                f"{f.name} is a partition of {listed[0]}, which is also listed: events of a "
                f"partitioned table use the root's name; remove {f.name} from `tables`",
                kind=Kind.SOURCE_CONFIG,
                table=f.name,
            ))
    for f in facts.values():
        targets = [f]
        if f.relkind == "p":
            targets = [
                TableFacts(names.join(r[4], r[0]), r[1], "r", r[2], r[3], True, ())
                for r in conn.execute(
                    "SELECT c.relname, c.oid, c.relreplident::text, "
                    "EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary), "
                    "n.nspname FROM pg_partition_tree(%s) t JOIN pg_class c ON c.oid = t.relid "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE t.isleaf",
                    (f.oid,),
                ).fetchall()
            ]
        for t in targets:
            problem = _identity_problem(t)
            if problem:
                problems.append(FatalSourceError(problem, kind=Kind.SOURCE_CONFIG))
    return facts, problems


def _is_identity_problem(problem: FatalError) -> bool:
    return str(problem).startswith("table ") and " has REPLICA IDENTITY " in str(problem)


def _identity_problem(t: TableFacts) -> str | None:
    fix = (
        f"run `ALTER TABLE {t.name} REPLICA IDENTITY FULL` (or add a primary key, or "
        f"`ALTER TABLE {t.name} REPLICA IDENTITY USING INDEX <unique index>`); cdc never "
        "changes a replica identity itself"
    )
    if t.replident == "n":
        return (
            f"table {t.name} has REPLICA IDENTITY NOTHING, so PostgreSQL sends no old row "
            f"for its updates and deletes (and refuses them once published): {fix}"
        )
    if t.replident == "d" and not t.has_pk:
        return (
            f"table {t.name} has REPLICA IDENTITY DEFAULT but no primary key, so PostgreSQL "
            f"cannot identify the rows of its updates and deletes: {fix}"
        )
    return None


# -- publications -------------------------------------------------------------------------------


def _publication_tables(conn: psycopg.Connection[Any], oid: int) -> list[str]:
    """The tables a publication lists (by name), sorted."""
    rows = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_publication_rel pr "
        "JOIN pg_class c ON c.oid = pr.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE pr.prpubid = %s",
        (oid,),
    ).fetchall()
    return sorted(names.join(r[0], r[1]) for r in rows)


def ensure_publication(
    conn: psycopg.Connection[Any], name: str, tables: Sequence[str], pipeline: str, version: int
) -> str:
    """Create or align a cdc-managed publication, or check someone else's. Returns what was
    done ("created", "altered", "unchanged", "checked")."""
    row = conn.execute(
        "SELECT p.oid, p.puballtables, p.pubinsert, p.pubupdate, p.pubdelete, p.pubtruncate, "
        "p.pubviaroot, coalesce(obj_description(p.oid, 'pg_publication'), '') "
        "FROM pg_publication p WHERE p.pubname = %s",
        (name,),
    ).fetchone()
    ident = sql.Identifier(name)
    wanted = sorted(tables)
    if row is None:
        try:
            conn.execute(
                sql.SQL(
                    "CREATE PUBLICATION {} FOR TABLE {} WITH (publish = 'insert, update, delete, "
                    "truncate', publish_via_partition_root = true)"
                ).format(ident, sql.SQL(", ").join(qualified(t) for t in wanted))
            )
            conn.execute(
                sql.SQL("COMMENT ON PUBLICATION {} IS {}").format(
                    ident,
                    sql.Literal(f"{PUBLICATION_MARK} (pipeline {pipeline}); kept equal to its tables"),
                )
            )
        except psycopg.errors.InsufficientPrivilege as exc:
            raise FatalSourceError(
                f"cannot create the publication {name}: {str(exc).strip()}. Creating a "
                "publication needs ownership of the tables: create it as their owner "
                f"(`CREATE PUBLICATION {name} FOR TABLE {', '.join(wanted)} WITH "
                "(publish_via_partition_root = true)`) and cdc will use it as it is",
                kind=Kind.SOURCE_PERMISSION,
            ) from exc
        return "created"
    oid, alltables, ins, upd, dele, trunc, viaroot, comment = row
    current = _publication_tables(conn, oid)
    if comment.startswith(PUBLICATION_MARK):
        done = "unchanged"
        try:
            if current != wanted:
                conn.execute(
                    sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(
                        ident, sql.SQL(", ").join(qualified(t) for t in wanted)
                    )
                )
                done = "altered"
            if not (ins and upd and dele and trunc and viaroot):
                conn.execute(
                    sql.SQL(
                        "ALTER PUBLICATION {} SET (publish = 'insert, update, delete, truncate', "
                        "publish_via_partition_root = true)"
                    ).format(ident)
                )
                done = "altered"
        except psycopg.errors.InsufficientPrivilege as exc:
            raise FatalSourceError(
                f"cannot alter the publication {name} to match `tables`: {str(exc).strip()}; "
                "alter it as the owner of the tables",
                kind=Kind.SOURCE_PERMISSION,
            ) from exc
        return done
    # Someone else's publication: check only.
    problems = _foreign_publication_problems(
        conn, name, oid, tables, (ins, upd, dele, trunc), viaroot, alltables, version
    )
    if problems:
        raise problems[0]
    return "checked"


def publication_problems(
    conn: psycopg.Connection[Any], name: str, tables: Sequence[str], version: int
) -> list[FatalError]:
    """What would stop :func:`ensure_publication` at start, found without changing anything
    (``cdc check``): cdc cannot create or align its own publication (no ownership of the
    tables, no CREATE on the database), or someone else's misses a table or an operation."""
    row = conn.execute(
        "SELECT p.oid, p.puballtables, p.pubinsert, p.pubupdate, p.pubdelete, p.pubtruncate, "
        "p.pubviaroot, coalesce(obj_description(p.oid, 'pg_publication'), '') "
        "FROM pg_publication p WHERE p.pubname = %s",
        (name,),
    ).fetchone()
    wanted = sorted(tables)
    if row is not None and not row[7].startswith(PUBLICATION_MARK):
        oid, alltables, ins, upd, dele, trunc, viaroot, _ = row
        return _foreign_publication_problems(
            conn, name, oid, tables, (ins, upd, dele, trunc), viaroot, alltables, version
        )
    if row is not None:
        oid, _, ins, upd, dele, trunc, viaroot, _ = row
        current = _publication_tables(conn, oid)
        if current == wanted and ins and upd and dele and trunc and viaroot:
            return []
        action = "alter"
    else:
        action = "create"
    problems: list[FatalError] = []
    not_owned = []
    for t in wanted:
        schema, table = split_table(t)
        owned = conn.execute(
            "SELECT pg_has_role(c.relowner, 'USAGE') FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
            (schema, table),
        ).fetchone()
        if owned is not None and not owned[0]:
            not_owned.append(t)
    if not_owned:
        problems.append(FatalSourceError(
            f"cdc would {action} the publication {name} at start, which needs ownership of the "
            f"tables, and the connecting role does not own {', '.join(not_owned)}: create the "
            f"publication as their owner (`CREATE PUBLICATION {name} FOR TABLE "
            f"{', '.join(wanted)} WITH (publish_via_partition_root = true)`) and cdc will use it "
            "as it is",
            kind=Kind.SOURCE_PERMISSION,
        ))
    if action == "create":
        (can_create,) = conn.execute(
            "SELECT has_database_privilege(current_database(), 'CREATE')"
        ).fetchone() or (True,)
        if not can_create:
            problems.append(FatalSourceError(
                f"cdc would create the publication {name} at start, which needs CREATE on the "
                f"database: run `GRANT CREATE ON DATABASE "
                f"{sql.Identifier(conn.info.dbname).as_string(conn)} TO "
                f"{sql.Identifier(conn.info.user).as_string(conn)}`, or create the publication "
                "yourself",
                kind=Kind.SOURCE_PERMISSION,
            ))
    return problems


def _foreign_publication_problems(
    conn: psycopg.Connection[Any],
    name: str,
    oid: int,
    tables: Sequence[str],
    ops: tuple[bool, bool, bool, bool],
    viaroot: bool,
    alltables: bool,
    version: int,
) -> list[FatalError]:
    """A publication cdc did not create is only checked: every listed table, every
    operation, no row filter, no column list."""
    problems: list[FatalError] = []
    wanted = sorted(tables)
    missing_ops = [op for op, on in zip(("insert", "update", "delete", "truncate"), ops, strict=True) if not on]
    if missing_ops:
        problems.append(FatalSourceError(
            f"publication {name} (not created by cdc) does not publish {', '.join(missing_ops)}: "
            f"run `ALTER PUBLICATION {name} SET (publish = 'insert, update, delete, truncate')`",
            kind=Kind.SOURCE_CONFIG,
        ))
    published = {
        names.join(r[0], r[1])
        for r in conn.execute(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s",
            (name,),
        ).fetchall()
    }
    for t in wanted:
        if t not in published:
            hint = ""
            if not viaroot:
                hint = (
                    " (if it is a partitioned table: the publication publishes its partitions; "
                    f"run `ALTER PUBLICATION {name} SET (publish_via_partition_root = true)`)"
                )
            problems.append(FatalSourceError(
                f"publication {name} (not created by cdc) does not include {t}{hint}: run "
                f"`ALTER PUBLICATION {name} ADD TABLE {t}`",
                kind=Kind.SOURCE_CONFIG,
                table=t,
            ))
    if version >= 150000 and not alltables:
        for nsp, rel, has_filter, has_cols in conn.execute(
            "SELECT n.nspname, c.relname, pr.prqual IS NOT NULL, pr.prattrs IS NOT NULL "
            "FROM pg_publication_rel pr JOIN pg_class c ON c.oid = pr.prrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE pr.prpubid = %s",
            (oid,),
        ).fetchall():
            tname = names.join(nsp, rel)
            if tname not in tables:
                continue
            if has_filter:
                problems.append(FatalSourceError(
                    f"publication {name} has a row filter on {tname}: cdc would miss rows; run "
                    f"`ALTER PUBLICATION {name} SET TABLE ...` without a WHERE clause for it",
                    kind=Kind.SOURCE_CONFIG,
                    table=tname,
                ))
            if has_cols:
                problems.append(FatalSourceError(
                    f"publication {name} has a column list on {tname}: cdc would miss columns; "
                    f"publish the whole table (use columns.exclude in the pipeline instead)",
                    kind=Kind.SOURCE_CONFIG,
                    table=tname,
                ))
    return problems


def drop_publication_if_managed(conn: psycopg.Connection[Any], name: str, dry_run: bool) -> str | None:
    row = conn.execute(
        "SELECT coalesce(obj_description(oid, 'pg_publication'), '') FROM pg_publication WHERE pubname = %s",
        (name,),
    ).fetchone()
    if row is None:
        return None
    if not row[0].startswith(PUBLICATION_MARK):
        return f"{'keep' if dry_run else 'kept'} publication {name} (not created by cdc)"
    if not dry_run:
        conn.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(name)))
    return f"{'drop' if dry_run else 'dropped'} publication {name}"


# -- slots ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlotFacts:
    name: str
    plugin: str | None
    slot_type: str
    database: str | None
    active_pid: int | None
    confirmed_flush: str | None
    restart_lsn: str | None
    wal_status: str | None
    retained_bytes: int | None


def slot_facts(conn: psycopg.Connection[Any], slot: str) -> SlotFacts | None:
    row = conn.execute(
        "SELECT slot_name, plugin, slot_type, database, active_pid, confirmed_flush_lsn::text, "
        "restart_lsn::text, wal_status, "
        "CASE WHEN restart_lsn IS NULL THEN NULL ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint END "
        "FROM pg_replication_slots WHERE slot_name = %s",
        (slot,),
    ).fetchone()
    return None if row is None else SlotFacts(*row)


def create_slot(conn: psycopg.Connection[Any], slot: str) -> str:
    try:
        row = conn.execute(
            "SELECT lsn::text FROM pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,)
        ).fetchone()
    except psycopg.errors.InsufficientPrivilege as exc:
        raise FatalSourceError(
            f"cannot create the replication slot {slot}: {str(exc).strip()}",
            kind=Kind.SOURCE_PERMISSION,
        ) from exc
    except psycopg.errors.ConfigurationLimitExceeded as exc:
        raise FatalSourceError(
            f"cannot create the replication slot {slot}: {str(exc).strip()}; raise "
            "max_replication_slots (and max_wal_senders) in postgresql.conf, or drop unused "
            "slots (`cdc status --json` and /metrics list unused cdc_* slots)",
            kind=Kind.SOURCE_CONFIG,
        ) from exc
    assert row is not None
    return str(row[0])


def cdc_slots(conn: psycopg.Connection[Any]) -> list[tuple[str, str | None, int | None]]:
    """Every inactive ``cdc_*`` slot of the cluster: (name, database, retained bytes). Active
    ones are in use by some consumer (another cdc instance, say), not forgotten."""
    return [
        (r[0], r[1], r[2])
        for r in conn.execute(
            "SELECT slot_name, database, CASE WHEN restart_lsn IS NULL THEN NULL ELSE "
            "pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint END "
            "FROM pg_replication_slots WHERE slot_name LIKE 'cdc\\_%' AND NOT active ORDER BY 1"
        ).fetchall()
    ]


# -- relations and types (once per Relation message) ---------------------------------------------


def type_facts(conn: psycopg.Connection[Any], oids: Sequence[int]) -> dict[int, TypeFacts]:
    rows = conn.execute(
        "SELECT t.oid::int, n.nspname, t.typname, t.typtype::text, t.typelem::int, "
        "t.typbasetype::int, t.typdelim::text, "
        "CASE WHEN t.typmodout = 0 THEN NULL ELSE pn.nspname || '.' || p.proname END "
        "FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
        "LEFT JOIN pg_proc p ON p.oid = t.typmodout LEFT JOIN pg_namespace pn ON pn.oid = p.pronamespace "
        "WHERE t.oid = ANY(%s)",
        (list(oids),),
    ).fetchall()
    out: dict[int, TypeFacts] = {}
    for oid, nsp, typname, typtype, elem, base, delim, modout in rows:
        name = typname if nsp == "pg_catalog" else f"{nsp}.{typname}"
        out[oid] = TypeFacts(oid, name, typtype, elem if typname.startswith("_") else 0, base, delim, modout)
    return out


def typmod_text(conn: psycopg.Connection[Any], modout: str, typmod: int) -> str:
    nsp, _, proc = modout.partition(".")
    row = conn.execute(
        sql.SQL("SELECT {}.{}(%s)").format(sql.Identifier(nsp), sql.Identifier(proc)), (typmod,)
    ).fetchone()
    text = str(row[0]) if row and row[0] is not None else ""
    # time/timestamp[tz] modifiers print "(3) with[out] time zone"; the type name says it
    for suffix in (" without time zone", " with time zone"):
        if text.endswith(suffix):
            return text[: -len(suffix)]
    return text


def key_columns(conn: psycopg.Connection[Any], relid: int, replident: str) -> list[str] | None:
    """The event key's columns in index order: the replica identity index under INDEX, else
    the primary key (DEFAULT and FULL). ``None`` when there is none (None also when the
    relation no longer exists)."""
    cond = "i.indisreplident" if replident == "i" else "i.indisprimary"
    row = conn.execute(
        "SELECT array_agg(a.attname ORDER BY k.ord) FROM pg_index i "
        "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
        f"WHERE i.indrelid = %s AND {cond}",
        (relid,),
    ).fetchone()
    if row is None or row[0] is None:
        return None
    return list(row[0])


def not_null_columns(conn: psycopg.Connection[Any], relid: int) -> set[str]:
    return {
        r[0]
        for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND attnotnull "
            "AND NOT attisdropped",
            (relid,),
        ).fetchall()
    }


def relation_facts(
    conn: psycopg.Connection[Any],
    relid: int,
    identity: str,
    columns: Sequence[tuple[int, int]],
    types: dict[int, TypeFacts],
    typmods: dict[tuple[int, int], str],
) -> RelationFacts:
    """The catalog facts :mod:`.relations` needs to describe relation ``relid`` whose columns
    are ``(type oid, typmod)``: four small queries at most, once per description, never per
    row. ``types`` and ``typmods`` are the caller's caches (a session's types are fetched
    once); they are filled in place and handed on."""
    pending = {oid for oid, _ in columns} - set(types)
    while pending:
        found = type_facts(conn, sorted(pending))
        types.update(found)
        pending = set()
        for t in found.values():
            for dep in (t.element, t.base):
                if dep and dep not in types:
                    pending.add(dep)
        pending -= set(found)
    key = key_columns(conn, relid, identity) if identity in ("d", "i", "f") else None
    not_null = not_null_columns(conn, relid)
    for t, typmod in typmods_wanted(types, columns):
        if (t.oid, typmod) not in typmods:
            assert t.modout is not None
            typmods[(t.oid, typmod)] = typmod_text(conn, t.modout, typmod)
    return RelationFacts(types, key, frozenset(not_null), typmods)
