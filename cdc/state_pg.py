"""The PostgreSQL state store and the leases of several instances (``state.dsn``).

Theory of operation. Several ``cdc run`` processes on the same pipeline file share one
PostgreSQL database for their state. It holds the same facts as the SQLite store (checkpoints,
schema history, per-pipeline meta) plus two coordination tables:

* ``cdc_instances``: one row per live process (a random id per start), with a heartbeat
  ``expires_at``. The number of live rows is what "a fair share" of the pipelines is measured
  against.
* ``cdc_leases``: one row per pipeline: the ``holder`` instance, a ``token`` (a bigint that
  grows by one at every takeover: the *fencing token*) and ``expires_at``. Every time is the
  database's clock (``now()``), never an instance's.

Each instance's :class:`LeaseManager` thread, every ``renew_s`` (5 s; ``CDC_LEASE_RENEW_S``):
heartbeats its instance row, renews the leases it holds (``UPDATE ... WHERE holder AND token``:
a lease someone else took is lost at once), and, when it holds fewer than
``ceil(pipelines / live instances)`` leases, takes one free lease (none, or expired for
``expire_s`` = 30 s; ``CDC_LEASE_EXPIRE_S``) by an ``INSERT ... ON CONFLICT DO UPDATE ...
WHERE expires_at <= now()``, which PostgreSQL serialises on the row: two instances can never
both take it. A new instance waits one renewal interval (jittered) before it takes its first
lease, and one more interval per lease it already holds before each further one, so instances
starting together see each other and share the pipelines.

Fencing: a checkpoint or a schema version is written in one transaction that first locks the
pipeline's lease row (``SELECT ... FOR UPDATE``) and checks that this instance still holds it
with the token it was granted. A paused or partitioned instance whose lease was taken over
therefore cannot write: :class:`~cdc.errors.LeaseLost` is raised, nothing is written, and the
pipeline (which acknowledges its source only after the checkpoint is saved) goes back to
standby. A takeover waits for a checkpoint transaction in flight on the same row, so the new
holder always reads the last checkpoint that was written.

Failures: a connection lost or refused is a :class:`~cdc.errors.RetriableError`
(``state_unreachable``); the store reconnects on its next call. The lease manager keeps trying
every interval; a lease it cannot renew stays held locally until its expiry and is then given up.

This is the only module of the core that imports a database client (psycopg 3).
"""

from __future__ import annotations

import math
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import orjson
import psycopg
from psycopg import errors as pg_errors

from cdc.errors import (
    FatalError,
    FatalStateError,
    Kind,
    LeaseLost,
    RetriableError,
    RetriableStateError,
)
from cdc.lease import PipelineLease
from cdc.log import get_logger, redact
from cdc.state import (
    OPEN_SNAPSHOT_STATES,
    Checkpoint,
    CheckpointStore,
    StoredSchemaVersion,
    mark_tables_cancelled,
)

#: version of the tables' layout, kept in ``cdc_state_version``
SCHEMA_VERSION = 2
#: seconds between lease renewals (and instance heartbeats)
RENEW_S = 5.0
#: seconds without renewal after which a lease may be taken over
EXPIRE_S = 30.0
#: advisory lock key taken while creating or migrating the tables
_MIGRATE_LOCK = 0x6364635F7374  # "cdc_st"

T = TypeVar("T")

_DDL = """
CREATE TABLE IF NOT EXISTS cdc_meta (
    pipeline text NOT NULL,
    key text NOT NULL,
    value text NOT NULL,
    PRIMARY KEY (pipeline, key)
);
CREATE TABLE IF NOT EXISTS cdc_checkpoints (
    pipeline text PRIMARY KEY,
    position text NOT NULL,
    sink text,
    saved_at double precision NOT NULL,
    holder text,
    token bigint
);
CREATE TABLE IF NOT EXISTS cdc_schema_versions (
    pipeline text NOT NULL,
    table_name text NOT NULL,
    version integer NOT NULL,
    at text NOT NULL,
    fingerprint text NOT NULL,
    definition text NOT NULL,
    recorded_at double precision NOT NULL,
    PRIMARY KEY (pipeline, table_name, version)
);
CREATE TABLE IF NOT EXISTS cdc_snapshots (
    pipeline text NOT NULL,
    id text NOT NULL,
    state text NOT NULL,
    created_at double precision NOT NULL,
    record text NOT NULL,
    PRIMARY KEY (pipeline, id)
);
CREATE TABLE IF NOT EXISTS cdc_leases (
    pipeline text PRIMARY KEY,
    holder text NOT NULL,
    token bigint NOT NULL,
    taken_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS cdc_instances (
    id text PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
"""


def lease_timings() -> tuple[float, float]:
    """(renew_s, expire_s): the defaults, or ``CDC_LEASE_RENEW_S`` / ``CDC_LEASE_EXPIRE_S``
    (meant for tests; an expiry shorter than two renewals is raised to two)."""
    renew = float(os.environ.get("CDC_LEASE_RENEW_S") or RENEW_S)
    expire = float(os.environ.get("CDC_LEASE_EXPIRE_S") or EXPIRE_S)
    return renew, max(expire, 2 * renew)


def _is_connection_error(exc: BaseException) -> bool:
    # connection failures, a server shutting down, a session the server ended (idle in a
    # transaction too long: a paused process, 25P03; transaction timeout, 25P04), and waits cut
    # short (statement or lock timeout, a serialisation failure): all passing. The server's end
    # of a session arrives as an error of class 25 or as a lost connection, whichever the
    # client reads first, so both must count the same.
    return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)) or (
        isinstance(exc, psycopg.Error)
        and (exc.sqlstate or "").startswith(("08", "57P", "57014", "55P03", "40", "25P03", "25P04"))
    )


class _Connection:
    """One lazily (re)opened autocommit connection behind a lock."""

    def __init__(self, dsn: str, display: str, connect_timeout: int, idle_tx_s: float) -> None:
        self._dsn = dsn
        self._idle_tx_ms = int(idle_tx_s * 1000)
        self._display = display
        self._timeout = connect_timeout
        self._conn: psycopg.Connection[Any] | None = None
        self.lock = threading.RLock()

    def run(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        with self.lock:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(
                        self._dsn,
                        autocommit=True,
                        connect_timeout=self._timeout,
                        keepalives=1,
                        keepalives_idle=10,
                        keepalives_interval=5,
                        keepalives_count=3,
                        application_name="cdc-state",
                    )
                    self._conn.execute("SET statement_timeout = '15s'")
                    # A process paused inside a transaction (SIGSTOP, a VM frozen) must not
                    # hold the lease row's lock: the server ends such a session, the
                    # transaction (a checkpoint) is rolled back, and a takeover can proceed.
                    self._conn.execute(
                        f"SET idle_in_transaction_session_timeout = {self._idle_tx_ms}"
                    )
                    # nor wait long for one (a renewal must not hang behind a takeover)
                    self._conn.execute(f"SET lock_timeout = {self._idle_tx_ms}")
                return fn(self._conn)
            except psycopg.Error as exc:
                if _is_connection_error(exc):
                    self.close()
                    raise RetriableStateError(
                        f"the state database {self._display} is unreachable: "
                        f"{redact(str(exc).strip())}",
                    ) from exc
                raise FatalStateError(
                    f"the state database {self._display} failed: {redact(str(exc).strip())}",
                ) from exc

    def close(self) -> None:
        with self.lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001 - closing a broken connection
                    pass


def _display(dsn: str) -> str:
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(state.dsn)"
    return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"


class PostgresStore(CheckpointStore):
    """The state store in a PostgreSQL database shared by several instances."""

    def __init__(self, dsn: str, *, readonly: bool = False) -> None:
        self.dsn = dsn
        self.display = _display(dsn)
        self.instance_id = uuid.uuid4().hex[:16]
        _, expire_s = lease_timings()
        self._db = _Connection(dsn, self.display, 5, min(5.0, expire_s / 3))
        #: pipeline -> fencing token, while this instance holds the lease (leases enabled)
        self._fences: dict[str, int] = {}
        self._fenced = False
        try:
            if readonly:
                self._db.run(self._check_readable)
            else:
                self._db.run(self._migrate)
        except RetriableError as exc:
            self._db.close()
            raise FatalStateError(str(exc), kind=Kind.STATE_UNREACHABLE) from exc
        except FatalError:
            self._db.close()
            raise

    # -- tables -----------------------------------------------------------------------------

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS cdc_state_version (version integer NOT NULL)")
            row = conn.execute("SELECT max(version) FROM cdc_state_version").fetchone()
            current = row[0] if row and row[0] is not None else 0
            if current > SCHEMA_VERSION:
                raise FatalStateError(
                    f"the state database {self.display} was written by a newer cdc (format "
                    f"{current}, this one reads {SCHEMA_VERSION}); upgrade cdc",
                    kind=Kind.STATE_VERSION,
                )
            conn.execute(_DDL)
            if current < SCHEMA_VERSION:
                conn.execute("DELETE FROM cdc_state_version")
                conn.execute("INSERT INTO cdc_state_version VALUES (%s)", (SCHEMA_VERSION,))

    def _check_readable(self, conn: psycopg.Connection[Any]) -> None:
        try:
            conn.execute("SELECT count(*) FROM cdc_checkpoints").fetchone()
        except pg_errors.UndefinedTable as exc:
            raise FatalStateError(
                f"no cdc state in the database {self.display} yet", kind=Kind.STATE_MISSING
            ) from exc

    # -- fencing ----------------------------------------------------------------------------

    def enable_fencing(self) -> None:
        """From now on, pipeline writes need the pipeline's lease (``cdc run``)."""
        self._fenced = True

    def set_fence(self, pipeline: str, token: int | None) -> None:
        if token is None:
            self._fences.pop(pipeline, None)
        else:
            self._fences[pipeline] = token

    def _check_fence(self, conn: psycopg.Connection[Any], pipeline: str) -> int | None:
        """Inside a transaction: lock the lease row and check this instance holds it."""
        if not self._fenced:
            return None
        token = self._fences.get(pipeline)
        row = None
        if token is not None:
            row = conn.execute(
                "SELECT token FROM cdc_leases WHERE pipeline = %s AND holder = %s AND token = %s "
                "FOR UPDATE",
                (pipeline, self.instance_id, token),
            ).fetchone()
        if row is None:
            raise LeaseLost(
                f"pipeline {pipeline!r}: this instance ({self.instance_id}) no longer holds its "
                f"lease (fencing token {token}); nothing was written",
                pipeline=pipeline,
            )
        return token

    # -- CheckpointStore --------------------------------------------------------------------

    def get_checkpoint(self, pipeline: str) -> Checkpoint | None:
        row = self._db.run(
            lambda c: c.execute(
                "SELECT position, sink, saved_at FROM cdc_checkpoints WHERE pipeline = %s",
                (pipeline,),
            ).fetchone()
        )
        return None if row is None else Checkpoint(row[0], row[1], row[2])

    def checkpoint_owner(self, pipeline: str) -> tuple[str | None, int | None] | None:
        """(holder, token) that wrote the pipeline's checkpoint, or None without one."""
        row = self._db.run(
            lambda c: c.execute(
                "SELECT holder, token FROM cdc_checkpoints WHERE pipeline = %s", (pipeline,)
            ).fetchone()
        )
        return None if row is None else (row[0], row[1])

    def save_checkpoint(
        self, pipeline: str, position: str, sink: str | None, snapshots: Sequence[dict[str, Any]] = ()
    ) -> None:
        def save(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                token = self._check_fence(conn, pipeline)
                self._update_snapshots(conn, pipeline, snapshots)
                conn.execute(
                    "INSERT INTO cdc_checkpoints (pipeline, position, sink, saved_at, holder, token) "
                    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (pipeline) DO UPDATE SET "
                    "position = excluded.position, sink = excluded.sink, "
                    "saved_at = excluded.saved_at, holder = excluded.holder, token = excluded.token",
                    (
                        pipeline,
                        position,
                        sink,
                        time.time(),
                        self.instance_id if token is not None else None,
                        token,
                    ),
                )

        self._db.run(save)

    def _update_snapshots(
        self, conn: psycopg.Connection[Any], pipeline: str, records: Sequence[dict[str, Any]]
    ) -> None:
        for r in records:
            conn.execute(
                "UPDATE cdc_snapshots SET state = %s, record = %s WHERE pipeline = %s AND id = %s "
                "AND state = ANY(%s)",
                (r["state"], orjson.dumps(r).decode(), pipeline, r["id"], list(OPEN_SNAPSHOT_STATES)),
            )

    def snapshots(self, pipeline: str) -> list[dict[str, Any]]:
        def read(conn: psycopg.Connection[Any]) -> list[Any]:
            try:
                with conn.transaction():
                    return conn.execute(
                        "SELECT record FROM cdc_snapshots WHERE pipeline = %s ORDER BY created_at, id",
                        (pipeline,),
                    ).fetchall()
            except pg_errors.UndefinedTable:  # a read-only look at an older cdc's state
                return []

        return [orjson.loads(r[0]) for r in self._db.run(read)]

    def add_snapshot(self, pipeline: str, record: dict[str, Any]) -> None:
        self._db.run(
            lambda c: c.execute(
                "INSERT INTO cdc_snapshots (pipeline, id, state, created_at, record) "
                "VALUES (%s, %s, %s, %s, %s)",
                (pipeline, record["id"], record["state"], record["created_at"], orjson.dumps(record).decode()),
            )
        )

    def update_snapshots(self, pipeline: str, records: Sequence[dict[str, Any]]) -> None:
        def update(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                self._check_fence(conn, pipeline)
                self._update_snapshots(conn, pipeline, records)

        self._db.run(update)

    def cancel_snapshot(self, pipeline: str, snapshot_id: str) -> dict[str, Any] | None:
        def cancel(conn: psycopg.Connection[Any]) -> dict[str, Any] | None:
            with conn.transaction():
                row = conn.execute(
                    "SELECT record FROM cdc_snapshots WHERE pipeline = %s AND id = %s FOR UPDATE",
                    (pipeline, snapshot_id),
                ).fetchone()
                if row is None:
                    return None
                record: dict[str, Any] = orjson.loads(row[0])
                if record["state"] in OPEN_SNAPSHOT_STATES:
                    record["state"] = "cancelled"
                    record["finished_at"] = time.time()
                    mark_tables_cancelled(record)
                    conn.execute(
                        "UPDATE cdc_snapshots SET state = %s, record = %s WHERE pipeline = %s AND id = %s",
                        (record["state"], orjson.dumps(record).decode(), pipeline, snapshot_id),
                    )
                return record

        return self._db.run(cancel)

    def schema_versions(self, pipeline: str) -> list[StoredSchemaVersion]:
        rows = self._db.run(
            lambda c: c.execute(
                "SELECT table_name, version, at, fingerprint, definition, recorded_at "
                "FROM cdc_schema_versions WHERE pipeline = %s ORDER BY table_name, version",
                (pipeline,),
            ).fetchall()
        )
        return [
            StoredSchemaVersion(t, v, tuple(orjson.loads(at)), fp, orjson.loads(d), ts)
            for t, v, at, fp, d, ts in rows
        ]

    def add_schema_version(self, pipeline: str, v: StoredSchemaVersion) -> None:
        def add(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                self._check_fence(conn, pipeline)
                conn.execute(
                    "INSERT INTO cdc_schema_versions "
                    "(pipeline, table_name, version, at, fingerprint, definition, recorded_at) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (
                        pipeline,
                        v.table,
                        v.version,
                        orjson.dumps(list(v.at)).decode(),
                        v.fingerprint,
                        orjson.dumps(v.definition).decode(),
                        v.recorded_at,
                    ),
                )

        self._db.run(add)

    def get_meta(self, pipeline: str, key: str) -> str | None:
        row = self._db.run(
            lambda c: c.execute(
                "SELECT value FROM cdc_meta WHERE pipeline = %s AND key = %s", (pipeline, key)
            ).fetchone()
        )
        return None if row is None else str(row[0])

    def set_meta(self, pipeline: str, key: str, value: str) -> None:
        self._db.run(
            lambda c: c.execute(
                "INSERT INTO cdc_meta (pipeline, key, value) VALUES (%s, %s, %s) "
                "ON CONFLICT (pipeline, key) DO UPDATE SET value = excluded.value",
                (pipeline, key, value),
            )
        )

    def pipelines(self) -> list[str]:
        rows = self._db.run(
            lambda c: c.execute(
                "SELECT pipeline FROM cdc_checkpoints UNION SELECT pipeline FROM "
                "cdc_schema_versions UNION SELECT pipeline FROM cdc_snapshots "
                "UNION SELECT pipeline FROM cdc_meta WHERE pipeline <> '' "
                "ORDER BY 1"
            ).fetchall()
        )
        return [r[0] for r in rows]

    def drop_pipeline(self, pipeline: str) -> None:
        def drop(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                for table in ("cdc_checkpoints", "cdc_schema_versions", "cdc_meta", "cdc_leases", "cdc_snapshots"):
                    conn.execute(f"DELETE FROM {table} WHERE pipeline = %s", (pipeline,))

        self._db.run(drop)

    def install_id(self) -> str:
        def get_or_create(conn: psycopg.Connection[Any]) -> str:
            conn.execute(
                "INSERT INTO cdc_meta (pipeline, key, value) VALUES ('', 'install_id', %s) "
                "ON CONFLICT DO NOTHING",
                (uuid.uuid4().hex,),
            )
            row = conn.execute(
                "SELECT value FROM cdc_meta WHERE pipeline = '' AND key = 'install_id'"
            ).fetchone()
            assert row is not None
            return str(row[0])

        return self._db.run(get_or_create)

    def leases_of(self) -> list[dict[str, Any]]:
        """Every lease row (for ``cdc status`` and tests): pipeline, holder, token, expired."""
        rows = self._db.run(
            lambda c: c.execute(
                "SELECT pipeline, holder, token, expires_at <= now() FROM cdc_leases ORDER BY 1"
            ).fetchall()
        )
        return [{"pipeline": p, "holder": h, "token": t, "expired": e} for p, h, t, e in rows]

    def lease_manager(self, pipelines: list[str]) -> LeaseManager:
        self.enable_fencing()
        return LeaseManager(self, pipelines)

    def close(self) -> None:
        self._db.close()


class LeaseManager:
    """Takes, renews and gives up this instance's leases (one thread)."""

    def __init__(self, store: PostgresStore, pipelines: list[str]) -> None:
        self.store = store
        self.instance_id = store.instance_id
        self.renew_s, self.expire_s = lease_timings()
        self.leases = {p: PipelineLease(p) for p in pipelines}
        self.log = get_logger(instance=self.instance_id)
        self._db = _Connection(
            store.dsn, store.display, max(2, math.ceil(self.renew_s)), min(5.0, self.expire_s / 3)
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._acquire_after = time.monotonic() + self.renew_s * (1.0 + random.random())
        #: True while the last renewal could not reach the state database
        self.unreachable = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="leases", daemon=True)
        self._thread.start()

    def stop(self, release: Iterable[str] = ()) -> None:
        """Stop renewing; give up the leases of ``release`` (pipelines that stopped cleanly,
        their last checkpoint saved) so another instance can take them at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        held = [
            (p, lease.token)
            for p, lease in self.leases.items()
            if p in set(release) and lease.token is not None
        ]
        for p, _ in held:
            self.leases[p].revoke()
            self.store.set_fence(p, None)

        def give_up(conn: psycopg.Connection[Any]) -> None:
            for p, token in held:
                conn.execute(
                    "UPDATE cdc_leases SET expires_at = now() WHERE pipeline = %s AND holder = %s "
                    "AND token = %s",
                    (p, self.instance_id, token),
                )
            conn.execute("DELETE FROM cdc_instances WHERE id = %s", (self.instance_id,))

        try:
            self._db.run(give_up)
            if held:
                self.log.info("leases_released", pipelines=[p for p, _ in held])
        except (RetriableError, FatalError) as exc:
            self.log.warning("leases_not_released", error=str(exc))
        self._db.close()

    def add(self, pipeline: str) -> PipelineLease:
        """A pipeline added by a reload: its lease is sought like the others'. The dict is
        replaced, never changed in place, as the lease thread iterates it."""
        lease = PipelineLease(pipeline)
        self.leases = {**self.leases, pipeline: lease}
        return lease

    def remove(self, pipeline: str) -> None:
        """A pipeline removed by a reload (already stopped): no longer renewed, so its lease
        expires and an instance whose file still has it takes it over."""
        lease = self.leases.get(pipeline)
        self.leases = {p: v for p, v in self.leases.items() if p != pipeline}
        if lease is not None and lease.token is not None:
            lease.revoke()
            self.store.set_fence(pipeline, None)

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._db.run(self._tick)
                if self.unreachable:
                    self.unreachable = False
                    self.log.info("state_database_reachable")
            except (RetriableError, FatalError) as exc:
                if not self.unreachable:
                    self.unreachable = True
                    self.log.warning("lease_renewal_failed", error_kind=exc.kind, error=str(exc))
            except Exception as exc:  # noqa: BLE001 - the loop must go on
                self.log.error("lease_manager_error", error=redact(repr(exc)))
            self._expire_locally()
            self._stop.wait(max(0.05, self.renew_s - (time.monotonic() - started)))

    def _expire_locally(self) -> None:
        for p, lease in self.leases.items():
            if lease.token is not None and not lease.held():
                self.log.warning("lease_expired", pipeline=p, token=lease.token)
                lease.revoke()
                self.store.set_fence(p, None)

    def _tick(self, conn: psycopg.Connection[Any]) -> None:
        t0 = time.monotonic()
        valid_until = t0 + self.expire_s - min(1.0, self.expire_s * 0.1)
        interval = f"{self.expire_s} seconds"
        conn.execute(
            "INSERT INTO cdc_instances (id, expires_at) VALUES (%s, now() + %s::interval) "
            "ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at",
            (self.instance_id, interval),
        )
        conn.execute("DELETE FROM cdc_instances WHERE expires_at < now() - interval '1 hour'")
        for p, lease in self.leases.items():
            token = lease.token
            if token is None:
                continue
            row = conn.execute(
                "UPDATE cdc_leases SET expires_at = now() + %s::interval "
                "WHERE pipeline = %s AND holder = %s AND token = %s RETURNING token",
                (interval, p, self.instance_id, token),
            ).fetchone()
            if row is not None:
                lease.extend(valid_until)
            else:
                self.log.warning("lease_lost", pipeline=p, token=token, reason="taken over")
                lease.revoke()
                self.store.set_fence(p, None)
        if time.monotonic() < self._acquire_after:
            return
        row = conn.execute("SELECT count(*) FROM cdc_instances WHERE expires_at > now()").fetchone()
        live = max(1, int(row[0]) if row else 1)
        held = sum(1 for lease in self.leases.values() if lease.token is not None)
        fair = math.ceil(len(self.leases) / live)
        if held >= fair:
            return
        wanted = [p for p, lease in self.leases.items() if lease.token is None]
        free = [
            r[0]
            for r in conn.execute(
                "SELECT p FROM unnest(%s::text[]) AS p WHERE NOT EXISTS "
                "(SELECT 1 FROM cdc_leases l WHERE l.pipeline = p AND l.expires_at > now())",
                (wanted,),
            ).fetchall()
        ]
        if not free:
            return
        pipeline = random.choice(free)
        row = conn.execute(
            "INSERT INTO cdc_leases AS l (pipeline, holder, token, expires_at) "
            "VALUES (%s, %s, 1, now() + %s::interval) ON CONFLICT (pipeline) DO UPDATE SET "
            "holder = excluded.holder, token = l.token + 1, taken_at = now(), "
            "expires_at = excluded.expires_at WHERE l.expires_at <= now() RETURNING token",
            (pipeline, self.instance_id, interval),
        ).fetchone()
        if row is None:
            return  # another instance was faster
        token = int(row[0])
        self.store.set_fence(pipeline, token)
        self.leases[pipeline].grant(token, valid_until)
        self.log.info(
            "lease_taken", pipeline=pipeline, token=token, live_instances=live, held=held + 1
        )
        # one more interval (jittered) per lease held before taking another
        self._acquire_after = time.monotonic() + (held + 1) * self.renew_s * (1.0 + random.random())
