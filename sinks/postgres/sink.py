"""The PostgreSQL read-model sink: the source's tables kept up to date in another PostgreSQL.

Theory of operation
-------------------
**One target transaction per checkpoint.** The first :meth:`PostgresSink.write` after a
checkpoint opens a transaction on the target; every write until the next :meth:`flush` applies
its events inside it; :meth:`flush` adds the pipeline's row in ``public.cdc_sink_positions``
and commits. So the rows, the DDL of schema changes and the position always change together.

**Exactly once.** The position row holds (JSON in ``position``) ``count``, how many events the
sink has applied for this pipeline, ever; ``tx_start``, the count before the last committed
transaction; ``first_id`` and ``last_id``, the ids of that transaction's first and last event;
and ``source``, the source position of its last event (for people and tools). :meth:`flush`
returns ``count`` as the resume token the pipeline keeps with its checkpoint. After a crash
the pipeline delivers again, in the same order and with the same ids, every event after its
checkpoint; :meth:`open` compares the target's ``count`` with the token: the difference K is
how many of them the target already holds (the transaction committed just before the crash,
whose checkpoint was not saved), and the sink skips exactly those K events. It checks first
that the first re-delivered event is ``first_id`` (and the K-th ``last_id``): a different
sequence (e.g. a snapshot chunk read again with other rows) stops the skipping with a warning
and is applied as it comes, which keyed tables absorb (upserts and deletes by key converge).

**Applying a batch.** Events are grouped per target table, in order; within a table the
changes of a run are collapsed to the last one per key (an update naming ``unchanged`` columns
takes them from the earlier change of the run when it has them), which is what applying them
one by one would leave. A run ends at a truncate, a schema change or a key change of that
table, so per-key order is kept. Each run is at most three statements, whatever its size: one
``DELETE ... USING`` (or, with ``deletes: soft``, an ``UPDATE ... SET __deleted = true``) and
one ``INSERT ... ON CONFLICT (key) DO UPDATE`` per set of ``unchanged`` columns (almost always
one), the rows sent as ONE JSON array parameter read by ``json_populate_recordset`` with the
target table's row type, so each value goes through its column type's own input function.
Keyless tables: inserts are batched the same way; an update or delete matches one whole row
(``IS NOT DISTINCT FROM`` on the text of each column the event's ``before`` has).

**Tables and schema changes.** A target table is created from the first schema version that
reaches it (PostgreSQL sources: the same types; MySQL/MariaDB: :mod:`sinks.postgres.types`),
with the same primary key, and marked with a comment naming the pipeline; a table without that
mark is used only with ``adopt_tables: true`` and a compatible shape. A newer version is
reconciled with the table's shape inside the batch's transaction: added columns are added,
changed types altered with a cast (or the pipeline stops naming the column), dropped columns
kept nullable or dropped (``drop_columns``), a changed key re-declared.

**Errors** are classified by SQLSTATE (:func:`classify`): connection failures, lock timeouts,
deadlocks and server shutdowns are retriable (the pipeline reconnects and resumes from its
checkpoint; the open transaction is lost with the connection, nothing is skipped); a value the
target refuses is fatal and names the event (the batch is re-applied one event at a time, under
savepoints, to find it). A batch the target leaves unanswered for :data:`DEGRADED_AFTER_S`
(a lock held by someone else, a hung server) makes the pipeline show ``retrying`` meanwhile.
"""

from __future__ import annotations

import base64
import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from cdc import names
from cdc.errors import (
    CDCError,
    EventUndeliverable,
    FatalSinkError,
    Kind,
    RetriableSinkError,
)
from cdc.log import redact
from cdc.plugin import PluginContext, Sink
from sinks.postgres.config import PostgresSinkConfig, render_name
from sinks.postgres.types import Unmappable, is_bytea, target_type

if TYPE_CHECKING:
    import psycopg

    from cdc.events import ChangeEvent
    from cdc.schema import SchemaVersion

POSITIONS = "public.cdc_sink_positions"
DELETED = "__deleted"
#: a batch the target has not answered for this long makes the pipeline show `retrying`
DEGRADED_AFTER_S = 3.0

#: SQLSTATE classes and codes that pass: connection, resources, operator intervention,
#: system errors, and the transaction conflicts a retry resolves
_RETRIABLE_CLASSES = ("08", "53", "57", "58")
_RETRIABLE_STATES = frozenset({"40001", "40P01", "55P03", "55006", "25P03"})


def _psycopg() -> Any:
    import psycopg

    return psycopg


def _sql() -> Any:
    from psycopg import sql

    return sql


def _text(exc: BaseException) -> str:
    text = str(exc).strip()
    return redact(text.splitlines()[0] if text else repr(exc))


def classify(
    exc: Exception, what: str, pipeline: str, *, event: str | None = None, table: str | None = None
) -> CDCError:
    """Map a psycopg error to Retriable or Fatal by its SQLSTATE (never by its text)."""
    state = getattr(exc, "sqlstate", None)
    message = _text(exc)
    if state is None or state[:2] in _RETRIABLE_CLASSES or state in _RETRIABLE_STATES:
        return RetriableSinkError(
            f"postgres sink: {what}: {message}; retrying, nothing is skipped",
            pipeline=pipeline,
            table=table,
        )
    if state[:2] == "28":
        return FatalSinkError(
            f"postgres sink: {what}: {message} (SQLSTATE {state}); check the DSN's user and "
            "password",
            pipeline=pipeline,
            kind=Kind.SINK_AUTH,
        )
    if state == "42501":
        return FatalSinkError(
            f"postgres sink: {what}: {message} (SQLSTATE {state}); the target user needs the "
            "privilege named above (GRANT it, see docs/postgres-sink.md)",
            pipeline=pipeline,
            table=table,
            kind=Kind.SINK_AUTH,
        )
    if state[:2] in ("22", "23") and event is not None:
        return FatalSinkError(
            f"postgres sink: the target refused event {event}"
            + (f" of {table}" if table else "")
            + f": {message} (SQLSTATE {state}). Without `dead_letter` it is not skipped: fix "
            "the target table or the value, then restart",
            pipeline=pipeline,
            table=table,
            position=event,
            kind=Kind.SINK_REJECTED,
        )
    return FatalSinkError(
        f"postgres sink: {what}: {message} (SQLSTATE {state})",
        pipeline=pipeline,
        table=table,
        position=event,
        kind=Kind.SINK_REJECTED,
    )


def _is_data_error(exc: Exception) -> bool:
    state = getattr(exc, "sqlstate", None)
    return state is not None and state[:2] in ("22", "23", "42") and state != "42501"


@dataclass
class Target:
    """A target table and its shape as this session knows it."""

    source: str  # the source table, "public.orders"
    schema: str
    table: str
    ident: Any  # sql.Composed "schema"."table"
    columns: dict[str, str] = field(default_factory=dict)  # name -> format_type
    notnull: set[str] = field(default_factory=set)
    key: tuple[str, ...] = ()
    pkey_name: str | None = None
    version: SchemaVersion | None = None
    bytea: frozenset[str] = frozenset()
    keyless: bool = False
    #: SQL text cache: (kind, columns...) -> statement
    statements: dict[Any, Any] = field(default_factory=dict)

    @property
    def display(self) -> str:
        return names.join(self.schema, self.table)


class _Run:
    """The pending changes of one target table (one schema version), collapsed by key."""

    __slots__ = ("target", "version", "ops", "inserts", "events")

    def __init__(self, target: Target, version: SchemaVersion) -> None:
        self.target = target
        self.version = version
        #: key -> (op "u"/"d"/"s", row or key, unchanged columns); "s": with soft deletes, a
        #: row written and then deleted within the run (upserted with ``__deleted = true``)
        self.ops: dict[Any, tuple[str, dict[str, Any], frozenset[str]]] = {}
        #: keyless inserts
        self.inserts: list[dict[str, Any]] = []
        self.events = 0


def _key_of(key: dict[str, Any]) -> Any:
    values = tuple(key.values())
    try:
        hash(values)
    except TypeError:  # a json key column
        return orjson.dumps(key)
    return values


def _hexify(row: dict[str, Any], columns: frozenset[str]) -> dict[str, Any]:
    """Binary values arrive as base64 and bytea takes hex (``\\x...``)."""
    out = dict(row)
    for c in columns:
        v = out.get(c)
        if isinstance(v, str):
            out[c] = "\\x" + base64.b64decode(v).hex()
        elif isinstance(v, list):
            out[c] = [("\\x" + base64.b64decode(x).hex()) if isinstance(x, str) else x for x in v]
    return out


class PostgresSink(Sink):
    """Applies events to tables in a target PostgreSQL, one transaction per checkpoint."""

    Config = PostgresSinkConfig
    #: ``format: debezium`` and these transforms make no sense for a read model
    formats = ("cdc",)
    refused_transforms = ("unwrap", "outbox")

    def __init__(self, config: PostgresSinkConfig, ctx: PluginContext) -> None:
        super().__init__(config, ctx)
        self.config: PostgresSinkConfig = config
        self._log = ctx.log.bind(sink="postgres")
        self._conn: psycopg.Connection[Any] | None = None
        self._mysql = getattr(ctx.pipeline, "source_type", "") == "mysql"
        self._targets: dict[str, Target] = {}
        self._types: dict[str, str] = {}
        self._count = 0  # events applied and committed, ever
        #: the row of cdc_sink_positions this sink keeps: the pipeline's, or under `cdc replay`
        #: the replay's own (``ctx.shared["position_row"]``), so a replay never moves the
        #: pipeline's count (which its crash recovery compares with its checkpoint's token)
        self._position_row = str(ctx.shared.get("position_row") or ctx.name)
        self._applied = 0  # events applied in the open transaction
        self._first_id: str | None = None
        self._last_id: str | None = None
        self._last_source: dict[str, Any] | None = None
        self._in_tx = False
        # skipping after a crash (see the module doc)
        self._skip = 0
        self._skip_first: str | None = None
        self._skip_last: str | None = None
        self._skipped = 0
        self._warned_keyless: set[str] = set()
        #: keyless source table -> the snapshot whose rows replaced its target rows
        self._replaced: dict[str, str] = {}
        # the watchdog of unanswered statements (see _busy)
        self._busy_since: float | None = None
        self._busy_what = ""
        self._degraded = False
        self._closing = threading.Event()
        self._watchdog: threading.Thread | None = None

    # ------------------------------------------------------------------ connection

    @property
    def _where(self) -> str:
        return redact(self.config.dsn)

    def _connect(self) -> psycopg.Connection[Any]:
        pg = _psycopg()
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        try:
            params = conninfo_to_dict(self.config.dsn)
        except pg.ProgrammingError as exc:
            raise FatalSinkError(
                f"postgres sink: invalid DSN {self._where}: {_text(exc)}",
                pipeline=self.ctx.name,
            ) from exc
        timeout = max(1, int(self.config.timeout_s))
        options = (
            "-c TimeZone=UTC -c DateStyle=ISO -c client_encoding=UTF8 "
            f"-c lock_timeout={timeout * 1000} -c idle_in_transaction_session_timeout=0"
        )
        params["options"] = f"{params['options']} {options}" if params.get("options") else options
        params.setdefault("connect_timeout", str(timeout))
        params.setdefault("application_name", f"cdc_sink_{self.ctx.name}")
        params.setdefault("keepalives", "1")
        params.setdefault("keepalives_idle", "10")
        params.setdefault("keepalives_interval", "5")
        params.setdefault("keepalives_count", "3")
        try:
            conn: psycopg.Connection[Any] = pg.connect(make_conninfo("", **params))
        except pg.Error as exc:
            raise classify(exc, f"cannot connect to {self._where}", self.ctx.name) from exc
        return conn

    @property
    def conn(self) -> psycopg.Connection[Any]:
        if self._conn is None:
            raise RetriableSinkError(
                "postgres sink: not connected", pipeline=self.ctx.name
            )
        return self._conn

    # ------------------------------------------------------------------ open / close

    def _read_position(self, conn: psycopg.Connection[Any]) -> dict[str, Any] | None:
        row = conn.execute("SELECT to_regclass('public.cdc_sink_positions') IS NOT NULL").fetchone()
        if not row or not row[0]:
            return None
        found = conn.execute(
            "SELECT position FROM public.cdc_sink_positions WHERE pipeline = %s", (self._position_row,)
        ).fetchone()
        if not found or found[0] is None:
            return None
        try:
            value = orjson.loads(found[0])
        except orjson.JSONDecodeError:
            return None
        return value if isinstance(value, dict) else None

    @contextlib.contextmanager
    def _busy(self, what: str) -> Iterator[None]:
        """Around a round of statements: the watchdog reports it when it takes too long; once
        it went through, a reported sink is ``running`` again."""
        self._busy_what = what
        self._busy_since = time.monotonic()
        try:
            yield
        finally:
            self._busy_since = None
        if self._degraded:
            self._degraded = False
            self._log.info("postgres_sink_writes_again", message="postgres sink writes again")
            self.ctx.degraded(None)

    def _watch(self) -> None:
        while not self._closing.wait(0.25):
            since = self._busy_since
            if since is None or self._degraded:
                continue
            waited = time.monotonic() - since
            if waited >= DEGRADED_AFTER_S:
                self._degraded = True
                self._log.warning(
                    "postgres_sink_target_not_answering", message="postgres sink: the target does not answer", waited_s=round(waited, 1)
                )
                self.ctx.degraded(
                    RetriableSinkError(
                        f"postgres sink: {self._busy_what}: no answer from {self._where} for "
                        f"{waited:.0f}s (a lock held by someone else, or a hung server); "
                        "waiting, nothing is skipped",
                        pipeline=self.ctx.name,
                    )
                )

    def open(self, resume: str | None) -> None:
        self.close()
        pg = _psycopg()
        self._closing.clear()
        self._watchdog = threading.Thread(
            target=self._watch, name=f"pg-sink-watch-{self.ctx.name}", daemon=True
        )
        self._watchdog.start()
        self._conn = self._connect()
        self._targets.clear()
        self._in_tx = False
        self._applied = 0
        self._skip = 0
        self._skipped = 0
        conn = self.conn
        try:
            exists = conn.execute("SELECT to_regclass('public.cdc_sink_positions')").fetchone()
            if not exists or exists[0] is None:
                self._create_positions(conn)
            position = self._read_position(conn) or {}
            conn.commit()
        except pg.Error as exc:
            raise classify(exc, "reading cdc_sink_positions", self.ctx.name) from exc
        self._count = int(position.get("count", 0) or 0)
        replaced = position.get("replaced")
        self._replaced = dict(replaced) if isinstance(replaced, dict) else {}
        token: int | None
        try:
            token = int(resume) if resume is not None else None
        except ValueError:
            self._log.warning("postgres_sink_ignores_a_resume_token", message="postgres sink ignores a resume token it did not write", token=resume)
            token = None
        held_after = 0 if token is None else self._count - token
        if held_after > 0:
            self._skip = held_after
            tx_start = int(position.get("tx_start", -1))
            self._skip_first = position.get("first_id") if tx_start == token else None
            self._skip_last = position.get("last_id")
            self._log.info(
                "postgres_sink_resumes_after_a_crash", message="postgres sink resumes after a crash: skips the events the target already holds",
                events=held_after,
                last_id=self._skip_last,
            )
        elif held_after < 0:
            self._log.error(
                "postgres_sink_the_target_holds_fewer", message="postgres sink: the target holds fewer events than the checkpoint covers (was "
                "it restored from an older backup?). Those changes are missing from the target; "
                "rebuild the read model (see docs/postgres-sink.md)",
                target_count=self._count,
                checkpoint_count=token,
            )
        self._log.info(
            "postgres_sink_open", message="postgres sink open",
            target=self._where,
            count=self._count,
            deletes=self.config.deletes,
        )

    def _create_positions(self, conn: psycopg.Connection[Any]) -> None:
        pg = _psycopg()
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS public.cdc_sink_positions (pipeline text PRIMARY KEY, "
                "position text, updated_at timestamptz)"
            )
        except pg.errors.InsufficientPrivilege as exc:
            conn.rollback()
            raise FatalSinkError(
                "postgres sink: the target user cannot create public.cdc_sink_positions (where "
                "the sink keeps its position): GRANT CREATE ON SCHEMA public TO <user>, or create "
                "it once as another user: CREATE TABLE public.cdc_sink_positions (pipeline text "
                "PRIMARY KEY, position text, updated_at timestamptz) and GRANT SELECT, INSERT, "
                f"UPDATE on it ({_text(exc)})",
                pipeline=self.ctx.name,
                kind=Kind.SINK_AUTH,
            ) from exc
        except pg.errors.UniqueViolation:  # created concurrently by another pipeline
            conn.rollback()

    def close(self) -> None:
        self._closing.set()
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.join(2)
        self._busy_since = None
        self._degraded = False
        conn, self._conn = self._conn, None
        self._in_tx = False
        self._applied = 0
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - close must not raise
                pass

    # ------------------------------------------------------------------ no state, drop

    def _one_off(self) -> dict[str, Any] | None:
        pg = _psycopg()
        conn = self._connect()
        try:
            return self._read_position(conn)
        except pg.Error as exc:
            raise classify(exc, "reading cdc_sink_positions", self.ctx.name) from exc
        finally:
            conn.close()

    def holds_events(self) -> bool:
        position = self._one_off()
        return bool(position and int(position.get("count", 0) or 0) > 0)

    def verify_view(self) -> Any:
        """The target tables, for ``cdc verify`` (:mod:`sinks.postgres.verify`)."""
        from sinks.postgres.verify import PostgresTablesView

        cfg = self.config
        return PostgresTablesView(cfg.dsn, cfg.schema, cfg.table, self.ctx.name)

    def describe_drop(self) -> list[str]:
        return [
            f"rename the row {self.ctx.name!r} of {POSITIONS} to {self.ctx.name}:dropped-<time> "
            "(kept, not deleted), so that a fresh start is allowed",
            "keep the target tables and their rows: drop or truncate them yourself if they "
            "should go",
        ]

    def drop(self) -> list[str]:
        suffix = time.strftime("dropped-%Y%m%dT%H%M%SZ", time.gmtime())
        pg = _psycopg()
        conn = self._connect()
        try:
            moved = conn.execute(
                "UPDATE public.cdc_sink_positions SET pipeline = pipeline || ':' || %s "
                "WHERE pipeline = %s",
                (suffix, self.ctx.name),
            ).rowcount
            conn.commit()
        except pg.errors.UndefinedTable:
            moved = 0
        except pg.Error as exc:
            raise classify(exc, "moving the position row aside", self.ctx.name) from exc
        finally:
            conn.close()
        line = (
            f"renamed the row {self.ctx.name} of {POSITIONS} to {self.ctx.name}:{suffix}"
            if moved
            else f"no row of {self.ctx.name} in {POSITIONS}"
        )
        return [line, "kept the target tables and their rows"]

    # ------------------------------------------------------------------ writing

    def write_schema(self, schema: SchemaVersion) -> None:
        """Nothing to send: a version is applied to its table (DDL) in the transaction of the
        first batch that uses it, so the table's shape always matches the committed position."""

    def _begin(self) -> None:
        if not self._in_tx:
            self._in_tx = True
            self._applied = 0
            self._first_id = None

    def write(self, events: Sequence[ChangeEvent]) -> None:
        if self._skip:
            events = self._skip_held(events)
        if not events:
            return
        pg = _psycopg()
        self._begin()
        conn = self.conn
        try:
            with self._busy(f"applying {len(events)} events"):
                conn.execute("SAVEPOINT cdc_write")
                self._apply(events)
                conn.execute("RELEASE SAVEPOINT cdc_write")
        except CDCError:
            raise
        except pg.Error as exc:
            if not _is_data_error(exc) or conn.closed or conn.broken:
                raise classify(exc, f"applying {len(events)} events", self.ctx.name) from exc
            self._diagnose(events, exc)
        self._accepted(events)

    def _accepted(self, events: Sequence[ChangeEvent]) -> None:
        """These events are in the open target transaction (or, the last of them, refused and
        handed to the dead letters): counted for the position row."""
        if self._first_id is None:
            self._first_id = events[0].id
        self._applied += len(events)
        last = events[-1]
        self._last_id = last.id
        self._last_source = last.source

    def _diagnose(self, events: Sequence[ChangeEvent], error: Exception) -> None:
        """A statement of the batch was refused: apply the events one at a time (each under a
        savepoint) to find the one the target refuses. The events before it stay applied and it
        is raised as :class:`EventUndeliverable` (with ``dead_letter`` the pipeline sets it
        aside and hands over the rest; without, it stops naming the event)."""
        pg = _psycopg()
        conn = self.conn
        self._targets.clear()  # the rollback undid any DDL of the batch
        try:
            conn.execute("ROLLBACK TO SAVEPOINT cdc_write")
            for i, e in enumerate(events):
                conn.execute("SAVEPOINT cdc_one")
                try:
                    self._apply([e])
                except pg.Error as exc:
                    if not _is_data_error(exc):
                        raise
                    conn.execute("ROLLBACK TO SAVEPOINT cdc_one")
                    self._targets.clear()
                    # the refused event counts as handled: a re-delivery after a crash skips it
                    self._accepted(events[: i + 1])
                    refused = classify(exc, "applying an event", self.ctx.name, event=e.id, table=e.table)
                    raise EventUndeliverable(
                        str(refused), event=e, pipeline=self.ctx.name, table=e.table, position=e.id
                    ) from exc
                conn.execute("RELEASE SAVEPOINT cdc_one")
        except EventUndeliverable:
            raise
        except CDCError:
            self.close()
            raise
        except pg.Error as exc:
            self.close()
            raise classify(exc, "finding the refused event", self.ctx.name) from exc
        self.close()
        raise classify(error, f"applying {len(events)} events", self.ctx.name)

    def _skip_held(self, events: Sequence[ChangeEvent]) -> Sequence[ChangeEvent]:
        """Leave out the re-delivered events the target already holds (see the module doc)."""
        if self._skipped == 0 and self._skip_first is not None and events[0].id != self._skip_first:
            self._log.warning(
                "postgres_sink_the_re_delivered_events", message="postgres sink: the re-delivered events differ from those the target holds after "
                "the checkpoint; applying them as they come (keyed tables converge; a keyless "
                "table may hold a row twice)",
                expected=self._skip_first,
                got=events[0].id,
            )
            self._skip = 0
            return events
        n = min(self._skip, len(events))
        self._skip -= n
        self._skipped += n
        if self._skip == 0:
            if self._skip_last is not None and events[n - 1].id != self._skip_last:
                self._log.warning(
                    "postgres_sink_the_last_skipped_event", message="postgres sink: the last skipped event is not the last one the target "
                    "holds; the re-delivered sequence differs (keyed tables converge)",
                    expected=self._skip_last,
                    got=events[n - 1].id,
                )
            self._log.info("postgres_sink_skipped_the_events", message="postgres sink skipped the events it already held", events=self._skipped)
        return events[n:]

    def flush(self) -> str | None:
        """Commit the open transaction with the pipeline's position row; the token is the
        number of events applied so far."""
        if not self._in_tx:
            return str(self._count)
        pg = _psycopg()
        count = self._count + self._applied
        source = self._last_source or {}
        position = orjson.dumps(
            {
                "count": count,
                "tx_start": self._count,
                "first_id": self._first_id,
                "last_id": self._last_id,
                "replaced": self._replaced,
                "source": {
                    k: source[k]
                    for k in ("connector", "lsn", "file", "pos", "gtid", "tx")
                    if k in source
                },
            }
        ).decode()
        conn = self.conn
        try:
            with self._busy("committing a batch"):
                conn.execute(
                    "INSERT INTO public.cdc_sink_positions (pipeline, position, updated_at) "
                    "VALUES (%s, %s, now()) ON CONFLICT (pipeline) DO UPDATE SET "
                    "position = EXCLUDED.position, updated_at = EXCLUDED.updated_at",
                    (self._position_row, position),
                )
                conn.commit()
        except pg.Error as exc:
            self.close()
            raise classify(exc, "committing a batch", self.ctx.name) from exc
        self._count = count
        self._applied = 0
        self._in_tx = False
        return str(count)

    # ------------------------------------------------------------------ applying

    def _apply(self, events: Sequence[ChangeEvent]) -> None:
        runs: dict[str, _Run] = {}
        soft = self.config.deletes == "soft"
        for e in events:
            sv = e.schema
            run = runs.get(sv.name)
            if run is None or run.version is not sv:
                if run is not None:
                    self._apply_run(run)
                run = _Run(self._target(sv), sv)
                runs[sv.name] = run
            target = run.target
            op = e.op
            if op == "t":
                self._apply_run(run)
                runs[sv.name] = _Run(target, sv)
                if soft:
                    self.conn.execute(
                        _sql()
                        .SQL("UPDATE {} SET {} = true WHERE NOT {}")
                        .format(
                            target.ident, _sql().Identifier(DELETED), _sql().Identifier(DELETED)
                        )
                    )
                else:
                    self.conn.execute(_sql().SQL("TRUNCATE {}").format(target.ident))
                continue
            if target.keyless:
                if op == "r" and e.after is not None:
                    snapshot = str(e.source.get("snapshot_id", ""))
                    if self._replaced.get(sv.name) != snapshot:
                        # a keyless table's snapshot is its whole content (docs/snapshots.md):
                        # its rows replace what the target holds
                        self._apply_run(run)
                        self.conn.execute(_sql().SQL("DELETE FROM {}").format(target.ident))
                        self._replaced[sv.name] = snapshot
                if op in ("c", "r") and e.after is not None:
                    run.inserts.append(e.after)
                else:
                    self._apply_run(run)
                    self._keyless_change(target, sv, e)
                continue
            if op == "d":
                if e.key is None:
                    continue
                if e.key_change is not None and isinstance(e.key_change.get("to"), dict):
                    self._apply_run(run)
                    self._rekey(target, e.key, e.key_change["to"])
                    continue
                k = _key_of(e.key)
                prev = run.ops.get(k) if soft else None
                if prev is not None and prev[0] in ("u", "s"):
                    # soft: the row written earlier in this run stays, marked deleted
                    run.ops[k] = ("s", prev[1], prev[2])
                else:
                    run.ops[k] = ("d", e.key, frozenset())
                continue
            after = e.after
            if after is None:
                continue
            key = e.key if e.key is not None else {c: after.get(c) for c in target.key}
            k = _key_of(key)
            unchanged = frozenset(e.unchanged) if e.unchanged else frozenset()
            if unchanged:
                prev = run.ops.get(k)
                if prev is not None and prev[0] in ("u", "s"):
                    had = {c: prev[1][c] for c in unchanged if c in prev[1]}
                    if had:
                        after = {**after, **had}
                        unchanged = unchanged.difference(had)
                    unchanged = unchanged | prev[2]
            run.ops[k] = ("u", after, unchanged)
        for run in runs.values():
            self._apply_run(run)

    def _rows(self, target: Target, rows: list[dict[str, Any]]) -> str:
        if target.bytea:
            rows = [_hexify(r, target.bytea) for r in rows]
        return orjson.dumps(rows).decode()

    def _cols(self, target: Target, sv: SchemaVersion, unchanged: frozenset[str]) -> list[str]:
        return [c.name for c in sv.columns if c.name in target.columns and c.name not in unchanged]

    def _apply_run(self, run: _Run) -> None:
        target = run.target
        if run.inserts:
            cols = self._cols(target, run.version, frozenset())
            self.conn.execute(
                self._insert_sql(target, tuple(cols), False), (self._rows(target, run.inserts),)
            )
            run.inserts = []
        if not run.ops:
            return
        deletes: list[dict[str, Any]] = []
        upserts: dict[tuple[frozenset[str], bool], list[dict[str, Any]]] = {}
        for op, row, unchanged in run.ops.values():
            if op == "d":
                deletes.append(row)
            else:
                upserts.setdefault((unchanged, op == "s"), []).append(row)
        run.ops = {}
        if deletes:
            self.conn.execute(self._delete_sql(target), (self._rows(target, deletes),))
        for (unchanged, deleted), rows in upserts.items():
            cols = self._cols(target, run.version, unchanged)
            self.conn.execute(
                self._insert_sql(target, tuple(cols), True, deleted), (self._rows(target, rows),)
            )

    def _match(self, target: Target, left: str, right: str) -> Any:
        sql = _sql()
        return sql.SQL(" AND ").join(
            sql.SQL("{}.{} = {}.{}").format(
                sql.Identifier(left), sql.Identifier(c), sql.Identifier(right), sql.Identifier(c)
            )
            for c in target.key
        )

    def _insert_sql(
        self, target: Target, cols: tuple[str, ...], upsert: bool, deleted: bool = False
    ) -> Any:
        """``INSERT`` of the rows of a JSON array parameter, an upsert by key when ``upsert``;
        with soft deletes it sets ``__deleted`` (to ``deleted``)."""
        cache_key = ("insert", upsert, deleted, cols)
        found = target.statements.get(cache_key)
        if found is not None:
            return found
        sql = _sql()
        soft = self.config.deletes == "soft" and DELETED in target.columns
        names_ = [sql.Identifier(c) for c in cols]
        flag = sql.SQL("true" if deleted else "false")
        query = sql.SQL(
            "INSERT INTO {t} ({cols}{d}) SELECT {cols}{v} FROM "
            "json_populate_recordset(NULL::{t}, %s::json)"
        ).format(
            t=target.ident,
            cols=sql.SQL(", ").join(names_),
            d=sql.SQL(", {}").format(sql.Identifier(DELETED)) if soft else sql.SQL(""),
            v=sql.SQL(", {}").format(flag) if soft else sql.SQL(""),
        )
        if upsert and target.key:
            sets = [
                sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c))
                for c in cols
                if c not in target.key
            ]
            if soft:
                sets.append(sql.SQL("{} = {}").format(sql.Identifier(DELETED), flag))
            conflict = sql.SQL(", ").join(sql.Identifier(c) for c in target.key)
            if sets:
                query = query + sql.SQL(" ON CONFLICT ({}) DO UPDATE SET {}").format(
                    conflict, sql.SQL(", ").join(sets)
                )
            else:
                query = query + sql.SQL(" ON CONFLICT ({}) DO NOTHING").format(conflict)
        text = query.as_bytes(self.conn)
        target.statements[cache_key] = text
        return text

    def _delete_sql(self, target: Target) -> Any:
        found = target.statements.get("delete")
        if found is not None:
            return found
        sql = _sql()
        if self.config.deletes == "soft":
            query = sql.SQL(
                "UPDATE {t} AS t SET {d} = true FROM json_populate_recordset(NULL::{t}, %s::json) "
                "AS k WHERE {m}"
            ).format(t=target.ident, d=sql.Identifier(DELETED), m=self._match(target, "t", "k"))
        else:
            query = sql.SQL(
                "DELETE FROM {t} AS t USING json_populate_recordset(NULL::{t}, %s::json) AS k "
                "WHERE {m}"
            ).format(t=target.ident, m=self._match(target, "t", "k"))
        text = query.as_bytes(self.conn)
        target.statements["delete"] = text
        return text

    def _rekey(self, target: Target, old: dict[str, Any], new: dict[str, Any]) -> None:
        """A key change (``d`` with ``key_change.to``): the stored row moves to the new key,
        so columns named ``unchanged`` by the following ``c`` keep their stored values."""
        sql = _sql()
        o, n = self._rows(target, [old]), self._rows(target, [new])
        if self.config.deletes == "hard":
            # a row already at the new key (a snapshot read) gives way to the moved one
            self.conn.execute(self._delete_sql(target), (n,))
            sets = sql.SQL(", ").join(
                sql.SQL("{c} = n.{c}").format(c=sql.Identifier(c)) for c in target.key
            )
            self.conn.execute(
                sql.SQL(
                    "UPDATE {t} AS t SET {sets} FROM json_populate_recordset(NULL::{t}, %s::json) "
                    "AS n, json_populate_recordset(NULL::{t}, %s::json) AS o WHERE {m}"
                ).format(t=target.ident, sets=sets, m=self._match(target, "t", "o")),
                (n, o),
            )
            return
        cols = list(target.columns)
        picks = [
            sql.SQL("n.{}").format(sql.Identifier(c))
            if c in target.key
            else (sql.SQL("false") if c == DELETED else sql.SQL("t.{}").format(sql.Identifier(c)))
            for c in cols
        ]
        others = [c for c in cols if c not in target.key]
        conflict = sql.SQL(", ").join(sql.Identifier(c) for c in target.key)
        query = sql.SQL(
            "INSERT INTO {t} ({cols}) SELECT {picks} FROM {t} AS t, "
            "json_populate_recordset(NULL::{t}, %s::json) AS n, "
            "json_populate_recordset(NULL::{t}, %s::json) AS o WHERE {m}"
        ).format(
            t=target.ident,
            cols=sql.SQL(", ").join(sql.Identifier(c) for c in cols),
            picks=sql.SQL(", ").join(picks),
            m=self._match(target, "t", "o"),
        )
        if others:
            query = query + sql.SQL(" ON CONFLICT ({}) DO UPDATE SET {}").format(
                conflict,
                sql.SQL(", ").join(
                    sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in others
                ),
            )
        self.conn.execute(query, (n, o))
        self.conn.execute(self._delete_sql(target), (o,))

    def _keyless_change(self, target: Target, sv: SchemaVersion, e: ChangeEvent) -> None:
        """An update or delete of a keyless table: one row whose every column the event's
        ``before`` has matches (``IS NOT DISTINCT FROM`` on the column's text)."""
        sql = _sql()
        before = e.before
        if before is None:
            raise FatalSinkError(
                f"postgres sink: event {e.id} ({e.op}) of the keyless table {sv.name} carries no "
                "old row, so the sink cannot find the target row to change; give the source "
                "table a primary key or REPLICA IDENTITY FULL",
                pipeline=self.ctx.name,
                table=sv.name,
                position=e.id,
                kind=Kind.SINK_REJECTED,
            )
        matched = [c for c in before if c in target.columns]
        match = (
            sql.SQL(" AND ").join(
                sql.SQL("x.{c}::text IS NOT DISTINCT FROM b.{c}::text").format(c=sql.Identifier(c))
                for c in matched
            )
            if matched
            else sql.SQL("true")
        )
        pick = sql.SQL(
            "(SELECT x.ctid FROM {t} AS x, json_populate_recordset(NULL::{t}, %s::json) AS b "
            "WHERE {m} LIMIT 1)"
        ).format(t=target.ident, m=match)
        b = self._rows(target, [before])
        if e.op == "d":
            self.conn.execute(
                sql.SQL("DELETE FROM {t} WHERE ctid = {pick}").format(t=target.ident, pick=pick),
                (b,),
            )
            return
        after = e.after or {}
        cols = [c for c in after if c in target.columns]
        if not cols:
            return
        sets = sql.SQL(", ").join(sql.SQL("{c} = a.{c}").format(c=sql.Identifier(c)) for c in cols)
        self.conn.execute(
            sql.SQL(
                "UPDATE {t} SET {sets} FROM json_populate_recordset(NULL::{t}, %s::json) AS a "
                "WHERE {t}.ctid = {pick}"
            ).format(t=target.ident, sets=sets, pick=pick),
            (self._rows(target, [after]), b),
        )

    # ------------------------------------------------------------------ tables and versions

    def _mark(self, source: str) -> str:
        return f"cdc read model of {source} for pipeline {self.ctx.name}"

    def _target(self, sv: SchemaVersion) -> Target:
        """The target table of a schema version, created or reconciled with it."""
        target = self._targets.get(sv.name)
        if target is not None and (
            target.version is sv
            or (target.version is not None and sv.version <= target.version.version)
        ):
            return target
        pg = _psycopg()
        try:
            if target is None:
                target = self._load(sv)
                self._targets[sv.name] = target
            else:
                self._reconcile(target, sv)
        except pg.Error as exc:
            self._targets.pop(sv.name, None)
            raise classify(
                exc, f"preparing the target table of {sv.name}", self.ctx.name, table=sv.name
            ) from exc
        target.version = sv
        return target

    def _desired(self, sv: SchemaVersion) -> dict[str, str]:
        """The version's columns with their target types, as ``format_type`` writes them."""
        wanted: dict[str, str] = {}
        for c in sv.columns:
            try:
                wanted[c.name] = target_type(c.type, self._mysql)
            except Unmappable as exc:
                raise FatalSinkError(
                    f"postgres sink: column {c.name} of {sv.name}: {exc}; see the type mapping "
                    "in docs/postgres-sink.md",
                    pipeline=self.ctx.name,
                    table=sv.name,
                ) from exc
        normal = self._normalize(sorted(set(wanted.values())), sv)
        return {name: normal[t] for name, t in wanted.items()}

    def _normalize(self, types: list[str], sv: SchemaVersion) -> dict[str, str]:
        """Each type as the target's ``format_type`` writes it (a temporary table, under a
        savepoint, declares them). A PostgreSQL source's type that the target does not know
        (an extension's or a user type) becomes ``text``, with a warning."""
        pg = _psycopg()
        sql = _sql()
        conn = self.conn
        for t in [t for t in types if t not in self._types]:
            conn.execute("SAVEPOINT cdc_probe")
            try:
                conn.execute(
                    sql.SQL("CREATE TEMPORARY TABLE cdc_probe (c {}) ON COMMIT DROP").format(
                        sql.SQL(t)
                    )
                )
                row = conn.execute(
                    "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                    "WHERE attrelid = 'pg_temp.cdc_probe'::regclass AND attname = 'c'"
                ).fetchone()
                conn.execute("DROP TABLE pg_temp.cdc_probe")
                conn.execute("RELEASE SAVEPOINT cdc_probe")
                self._types[t] = str(row[0]) if row else t
            except pg.Error as exc:
                conn.execute("ROLLBACK TO SAVEPOINT cdc_probe")
                state = getattr(exc, "sqlstate", None) or ""
                if state[:2] not in ("42", "22"):
                    raise
                columns = [c.name for c in sv.columns if target_type(c.type, self._mysql) == t]
                if self._mysql:
                    raise FatalSinkError(
                        f"postgres sink: the target does not accept the type {t} of "
                        f"{sv.name} column(s) {', '.join(columns)}: {_text(exc)}",
                        pipeline=self.ctx.name,
                        table=sv.name,
                    ) from exc
                self._log.warning(
                    "postgres_sink_unknown_source_type", message="postgres sink: the target does not know a source type; its columns are "
                    "created as text (the source's text output)",
                    table=sv.name,
                    type=t,
                    columns=columns,
                )
                self._types[t] = "text"
        return {t: self._types[t] for t in types}

    def _names(self, sv: SchemaVersion) -> tuple[str, str]:
        schema, table = names.split(sv.name)
        values = {"pipeline": self.ctx.name, "schema": schema, "table": table}
        return render_name(self.config.schema, **values), render_name(self.config.table, **values)

    def _shape(self, target: Target) -> tuple[bool, str | None]:
        """Read the table's columns and key from the catalog: whether it exists, and its
        comment."""
        conn = self.conn
        row = conn.execute(
            "SELECT c.oid, obj_description(c.oid, 'pg_class') FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
            (target.schema, target.table),
        ).fetchone()
        if row is None:
            return False, None
        oid = row[0]
        target.columns = {}
        target.notnull = set()
        for name, typ, notnull in conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute "
            "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            (oid,),
        ).fetchall():
            target.columns[name] = typ
            if notnull:
                target.notnull.add(name)
        key = conn.execute(
            "SELECT con.conname, array_agg(a.attname ORDER BY k.n) FROM pg_constraint con "
            "CROSS JOIN LATERAL unnest(con.conkey) WITH ORDINALITY AS k(attnum, n) "
            "JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum "
            "WHERE con.conrelid = %s AND con.contype = 'p' GROUP BY con.conname",
            (oid,),
        ).fetchone()
        target.pkey_name = key[0] if key else None
        target.key = tuple(key[1]) if key else ()
        target.keyless = not target.key
        target.bytea = frozenset(c for c, t in target.columns.items() if is_bytea(t))
        target.statements.clear()
        return True, row[1]

    def _load(self, sv: SchemaVersion) -> Target:
        sql = _sql()
        schema, table = self._names(sv)
        target = Target(
            source=sv.name,
            schema=schema,
            table=table,
            ident=sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table)),
        )
        desired = self._desired(sv)
        if not sv.key and sv.name not in self._warned_keyless:
            self._warned_keyless.add(sv.name)
            self._log.warning(
                "postgres_sink_the_source_table_has", message="postgres sink: the source table has no primary key; its target table has none "
                "either and changes are applied by whole-row match, one row per event",
                table=sv.name,
                target=target.display,
            )
        exists, comment = self._shape(target)
        if not exists:
            self._create(target, sv, desired)
            self._shape(target)
            return target
        if comment != self._mark(sv.name):
            differences = self._differences(target, sv, desired)
            if not self.config.adopt_tables or differences:
                owner = (
                    f"it was created by another pipeline ({comment})"
                    if comment and comment.startswith("cdc read model of ")
                    else "it was not created by this pipeline"
                )
                shape = (
                    "its shape differs from the source's: " + "; ".join(differences)
                    if differences
                    else "its shape is compatible"
                )
                hint = (
                    "set adopt_tables: true to use it"
                    if not differences
                    else "change the table, or point sink.schema / sink.table elsewhere"
                )
                raise FatalSinkError(
                    f"postgres sink: the target table {target.display} (for {sv.name}) exists and "
                    f"{owner}; {shape}; {hint}",
                    pipeline=self.ctx.name,
                    table=sv.name,
                )
            self._log.warning(
                "postgres_sink_adopts_an_existing_table", message="postgres sink adopts an existing table", table=sv.name, target=target.display
            )
            self.conn.execute(
                sql.SQL("COMMENT ON TABLE {} IS {}").format(
                    target.ident, sql.Literal(self._mark(sv.name))
                )
            )
        self._reconcile(target, sv, desired)
        return target

    def _differences(self, target: Target, sv: SchemaVersion, desired: dict[str, str]) -> list[str]:
        out: list[str] = []
        for name, typ in desired.items():
            have = target.columns.get(name)
            if have is None:
                out.append(f"column {name} ({typ}) is missing")
            elif have != typ:
                out.append(f"column {name} is {have}, the source's is {typ}")
        for name in target.columns:
            if name not in desired and name != DELETED and name in target.notnull:
                out.append(f"column {name} is NOT NULL and the source has no such column")
        if tuple(sv.key) != target.key:
            out.append(
                f"primary key ({', '.join(target.key) or 'none'}), the source's is "
                f"({', '.join(sv.key) or 'none'})"
            )
        return out

    def _create(self, target: Target, sv: SchemaVersion, desired: dict[str, str]) -> None:
        sql = _sql()
        conn = self.conn
        exists = conn.execute(
            "SELECT has_schema_privilege(n.oid, 'CREATE') FROM pg_namespace n WHERE nspname = %s",
            (target.schema,),
        ).fetchone()
        if exists is None:
            can = conn.execute(
                "SELECT has_database_privilege(current_database(), 'CREATE'), current_user, "
                "current_database()"
            ).fetchone()
            if not can or not can[0]:
                raise FatalSinkError(
                    f"postgres sink: the target user {can[1] if can else '?'} cannot create the "
                    f"schema {target.schema!r} (for {sv.name}): GRANT CREATE ON DATABASE "
                    f"{can[2] if can else '?'} TO {can[1] if can else '<user>'}, or create the "
                    "schema yourself and grant CREATE on it",
                    pipeline=self.ctx.name,
                    table=sv.name,
                    kind=Kind.SINK_AUTH,
                )
            conn.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(target.schema))
            )
        elif not exists[0]:
            user = conn.execute("SELECT current_user").fetchone()
            raise FatalSinkError(
                f"postgres sink: the target user {user[0] if user else '?'} cannot create tables "
                f"in the schema {target.schema!r} (for {sv.name}): GRANT CREATE ON SCHEMA "
                f"{target.schema} TO {user[0] if user else '<user>'}",
                pipeline=self.ctx.name,
                table=sv.name,
                kind=Kind.SINK_AUTH,
            )
        parts = [
            sql.SQL("{} {}{}").format(
                sql.Identifier(name), sql.SQL(typ), sql.SQL(" NOT NULL" if name in sv.key else "")
            )
            for name, typ in desired.items()
        ]
        if self.config.deletes == "soft" and sv.key:
            parts.append(
                sql.SQL("{} boolean NOT NULL DEFAULT false").format(sql.Identifier(DELETED))
            )
        if sv.key:
            parts.append(
                sql.SQL("PRIMARY KEY ({})").format(
                    sql.SQL(", ").join(sql.Identifier(c) for c in sv.key)
                )
            )
        conn.execute(
            sql.SQL("CREATE TABLE {} ({})").format(target.ident, sql.SQL(", ").join(parts))
        )
        conn.execute(
            sql.SQL("COMMENT ON TABLE {} IS {}").format(
                target.ident, sql.Literal(self._mark(sv.name))
            )
        )
        self._log.info("postgres_sink_created_a_table", message="postgres sink created a table", table=sv.name, target=target.display)

    def _reconcile(
        self, target: Target, sv: SchemaVersion, desired: dict[str, str] | None = None
    ) -> None:
        """Bring the table's shape to the version's (module doc, "Tables and schema changes")."""
        pg = _psycopg()
        sql = _sql()
        conn = self.conn
        if desired is None:
            desired = self._desired(sv)
        changes: list[str] = []
        for name, typ in desired.items():
            if name not in target.columns:
                conn.execute(
                    sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                        target.ident, sql.Identifier(name), sql.SQL(typ)
                    )
                )
                changes.append(f"added {name} {typ}")
            elif target.columns[name] != typ:
                conn.execute("SAVEPOINT cdc_alter")
                try:
                    conn.execute(
                        sql.SQL(
                            "ALTER TABLE {t} ALTER COLUMN {c} TYPE {typ} USING {c}::{typ}"
                        ).format(t=target.ident, c=sql.Identifier(name), typ=sql.SQL(typ))
                    )
                    conn.execute("RELEASE SAVEPOINT cdc_alter")
                except pg.Error as exc:
                    state = getattr(exc, "sqlstate", None) or ""
                    if state[:2] not in ("42", "22", "23", "0A"):
                        raise
                    conn.execute("ROLLBACK TO SAVEPOINT cdc_alter")
                    raise FatalSinkError(
                        f"postgres sink: the type of column {name} of {sv.name} changed from "
                        f"{target.columns[name]} to {typ} and the target table "
                        f"{target.display} cannot be altered with a cast: {_text(exc)}; alter "
                        "or rebuild the target table yourself, then restart",
                        pipeline=self.ctx.name,
                        table=sv.name,
                        kind=Kind.SINK_REJECTED,
                    ) from exc
                changes.append(f"altered {name} to {typ}")
        if tuple(sv.key) != target.key:
            if target.pkey_name is not None:
                conn.execute(
                    sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                        target.ident, sql.Identifier(target.pkey_name)
                    )
                )
            if sv.key:
                conn.execute(
                    sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(
                        target.ident, sql.SQL(", ").join(sql.Identifier(c) for c in sv.key)
                    )
                )
            changes.append(f"primary key ({', '.join(sv.key) or 'none'})")
        for name in list(target.columns):
            if name in desired or name == DELETED:
                continue
            if self.config.drop_columns:
                conn.execute(
                    sql.SQL("ALTER TABLE {} DROP COLUMN {}").format(
                        target.ident, sql.Identifier(name)
                    )
                )
                changes.append(f"dropped {name}")
            elif name in target.notnull and name not in sv.key:
                conn.execute(
                    sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP NOT NULL").format(
                        target.ident, sql.Identifier(name)
                    )
                )
                changes.append(f"kept {name}, now nullable")
        if self.config.deletes == "soft" and sv.key and DELETED not in target.columns:
            conn.execute(
                sql.SQL("ALTER TABLE {} ADD COLUMN {} boolean NOT NULL DEFAULT false").format(
                    target.ident, sql.Identifier(DELETED)
                )
            )
            changes.append(f"added {DELETED}")
        if changes:
            self._shape(target)
            self._log.info(
                "postgres_sink_changed_a_table", message="postgres sink changed a table",
                table=sv.name,
                version=sv.version,
                target=target.display,
                changes=changes,
            )
