"""The state store: checkpoints, schema history and per-pipeline facts.

Theory of operation: the store is the service's memory across restarts. A checkpoint is saved
only after the sink has made every event before it durable, and the source is acknowledged
only after the checkpoint is saved, so the store is never ahead of the sink and the source is
never ahead of the store. Schema versions are recorded before the first event that uses them
is handed to the sink.

The default store is one SQLite file (WAL journal, ``synchronous=FULL``: a saved checkpoint
survives power loss). Several threads share one connection behind a lock; writes are tiny and
rare (one per batch), so the lock is never contended for long. ``cdc status`` and
``cdc schemas`` open the same file read-only while the service runs.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from cdc.errors import FatalError, FatalStateError, Kind

if TYPE_CHECKING:
    from cdc.lease import LeaseCoordinator

SCHEMA_VERSION = 2
#: snapshot states that may still change (the pipeline updates only these)
OPEN_SNAPSHOT_STATES = ("pending", "running")


def mark_tables_cancelled(record: dict[str, Any]) -> None:
    """A cancelled snapshot's unfinished tables are ``cancelled`` too (they used to stay
    ``running`` in the record forever)."""
    for progress in record.get("progress", {}).values():
        if progress.get("state") in OPEN_SNAPSHOT_STATES:
            progress["state"] = "cancelled"


#: SQLite primary result codes that mean the file is damaged or not a database
SQLITE_CORRUPT = 11
SQLITE_NOTADB = 26


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A saved position: ``position`` is the source's serialised position; ``sink`` the sink's
    resume token at that moment (or ``None``)."""

    position: str
    sink: str | None
    saved_at: float


@dataclass(frozen=True, slots=True)
class StoredSchemaVersion:
    table: str
    version: int
    at: tuple[int, ...]
    fingerprint: str
    definition: dict[str, Any]
    recorded_at: float


class CheckpointStore(ABC):
    """What the pipeline needs from a state store (SQLite, or PostgreSQL in :mod:`cdc.state_pg`)."""

    @abstractmethod
    def get_checkpoint(self, pipeline: str) -> Checkpoint | None: ...

    @abstractmethod
    def save_checkpoint(
        self, pipeline: str, position: str, sink: str | None, snapshots: Sequence[dict[str, Any]] = ()
    ) -> None:
        """Save the checkpoint and, in the same transaction, the snapshot records whose
        progress it covers (see :meth:`update_snapshots`)."""

    # -- snapshots: one JSON record per snapshot (see cdc.snapshot) --

    @abstractmethod
    def snapshots(self, pipeline: str) -> list[dict[str, Any]]:
        """Every snapshot record of the pipeline, oldest first."""

    @abstractmethod
    def add_snapshot(self, pipeline: str, record: dict[str, Any]) -> None:
        """Record a new snapshot (any instance may: it needs no lease)."""

    @abstractmethod
    def update_snapshots(self, pipeline: str, records: Sequence[dict[str, Any]]) -> None:
        """Replace records that are still pending or running; an ended one (a cancelled
        snapshot) is never overwritten."""

    @abstractmethod
    def cancel_snapshot(self, pipeline: str, snapshot_id: str) -> dict[str, Any] | None:
        """Mark a pending or running snapshot cancelled; return its record (None: unknown)."""

    @abstractmethod
    def schema_versions(self, pipeline: str) -> list[StoredSchemaVersion]: ...

    @abstractmethod
    def add_schema_version(self, pipeline: str, v: StoredSchemaVersion) -> None: ...

    @abstractmethod
    def get_meta(self, pipeline: str, key: str) -> str | None: ...

    @abstractmethod
    def set_meta(self, pipeline: str, key: str, value: str) -> None: ...

    @abstractmethod
    def pipelines(self) -> list[str]: ...

    @abstractmethod
    def drop_pipeline(self, pipeline: str) -> None: ...

    @abstractmethod
    def install_id(self) -> str: ...

    @abstractmethod
    def close(self) -> None: ...

    def lease_manager(self, pipelines: list[str]) -> LeaseCoordinator | None:
        """Called once by ``cdc run`` before its pipelines start. A store shared by several
        instances returns the manager of this instance's leases, and from then on refuses a
        pipeline's writes unless this instance holds its lease; a store of one instance (SQLite)
        returns None: every pipeline runs, no leases."""
        return None


_DDL = """
CREATE TABLE IF NOT EXISTS meta (
    pipeline TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (pipeline, key)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    pipeline TEXT PRIMARY KEY,
    position TEXT NOT NULL,
    sink TEXT,
    saved_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
    pipeline TEXT NOT NULL,
    id TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (pipeline, id)
);
CREATE TABLE IF NOT EXISTS schema_versions (
    pipeline TEXT NOT NULL,
    table_name TEXT NOT NULL,
    version INTEGER NOT NULL,
    at TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    definition TEXT NOT NULL,
    recorded_at REAL NOT NULL,
    PRIMARY KEY (pipeline, table_name, version)
);
"""


class SQLiteStore(CheckpointStore):
    """The default state store: one SQLite file."""

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        if readonly and not self.path.exists():
            raise FatalError(f"no state file at {self.path}")
        if not readonly and str(path) != ":memory:" and not self.path.parent.is_dir():
            # A typo in state.path must not silently create a tree and start from no state.
            raise FatalStateError(
                f"state.path {self.path}: the folder {self.path.parent} does not exist; create "
                "it (or fix the path)",
                kind=Kind.CONFIG,
            )
        uri = f"file:{self.path}?mode=ro" if readonly else f"file:{self.path}"
        try:
            self._db = sqlite3.connect(
                uri, uri=True, check_same_thread=False, isolation_level=None, timeout=10
            )
            if not readonly:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._migrate()
            else:
                self._db.execute("SELECT count(*) FROM checkpoints").fetchone()
        except sqlite3.DatabaseError as exc:
            raise FatalStateError(
                f"the state file {self.path} is not a valid cdc state database ({exc}); "
                "restore it from a backup, or move it away and recover the pipelines as "
                "the docs describe (cdc drop, or cdc run --adopt)",
                kind=Kind.STATE_CORRUPT,
            ) from exc

    def _migrate(self) -> None:
        (current,) = self._db.execute("PRAGMA user_version").fetchone()
        if current > SCHEMA_VERSION:
            raise FatalStateError(
                f"the state file {self.path} was written by a newer cdc (format {current}, "
                f"this one reads {SCHEMA_VERSION}); upgrade cdc",
                kind=Kind.STATE_VERSION,
            )
        self._db.executescript(_DDL)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.DatabaseError as exc:
                raise self._failed(exc) from exc

    def _failed(self, exc: sqlite3.DatabaseError) -> FatalError:
        """A state-file error: a damaged file says so and the way on; anything else as is."""
        text = str(exc)
        # SQLite's primary result codes (the low byte of the extended one): CORRUPT, NOTADB
        code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
        if code in (SQLITE_CORRUPT, SQLITE_NOTADB) or isinstance(exc, sqlite3.DataError):
            return FatalStateError(
                f"the state file {self.path} is damaged ({text}); restore it from a backup, or "
                "move it away and recover the pipelines as the docs describe (cdc drop, or cdc "
                "run --adopt)",
                kind=Kind.STATE_CORRUPT,
            )
        return FatalStateError(f"the state file {self.path} failed: {text}")

    def get_checkpoint(self, pipeline: str) -> Checkpoint | None:
        rows = self._run(
            "SELECT position, sink, saved_at FROM checkpoints WHERE pipeline = ?", (pipeline,)
        )
        if not rows:
            return None
        position, sink, saved_at = rows[0]
        return Checkpoint(position, sink, saved_at)

    def save_checkpoint(
        self, pipeline: str, position: str, sink: str | None, snapshots: Sequence[dict[str, Any]] = ()
    ) -> None:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.execute(
                        "INSERT INTO checkpoints (pipeline, position, sink, saved_at) "
                        "VALUES (?, ?, ?, ?) ON CONFLICT (pipeline) DO UPDATE SET "
                        "position = excluded.position, sink = excluded.sink, "
                        "saved_at = excluded.saved_at",
                        (pipeline, position, sink, time.time()),
                    )
                    self._update_snapshots(pipeline, snapshots)
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.DatabaseError as exc:
                raise self._failed(exc) from exc

    def _update_snapshots(self, pipeline: str, records: Sequence[dict[str, Any]]) -> None:
        placeholders = ", ".join("?" for _ in OPEN_SNAPSHOT_STATES)
        for r in records:
            self._db.execute(
                f"UPDATE snapshots SET state = ?, record = ? WHERE pipeline = ? AND id = ? "
                f"AND state IN ({placeholders})",
                (r["state"], orjson.dumps(r).decode(), pipeline, r["id"], *OPEN_SNAPSHOT_STATES),
            )

    def snapshots(self, pipeline: str) -> list[dict[str, Any]]:
        with self._lock:
            try:
                rows = self._db.execute(
                    "SELECT record FROM snapshots WHERE pipeline = ? ORDER BY created_at, id",
                    (pipeline,),
                ).fetchall()
            except sqlite3.OperationalError:  # a read-only look at a file of an older cdc
                return []
        return [orjson.loads(r[0]) for r in rows]

    def add_snapshot(self, pipeline: str, record: dict[str, Any]) -> None:
        self._run(
            "INSERT INTO snapshots (pipeline, id, state, created_at, record) VALUES (?, ?, ?, ?, ?)",
            (pipeline, record["id"], record["state"], record["created_at"], orjson.dumps(record).decode()),
        )

    def update_snapshots(self, pipeline: str, records: Sequence[dict[str, Any]]) -> None:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._update_snapshots(pipeline, records)
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.DatabaseError as exc:
                raise self._failed(exc) from exc

    def cancel_snapshot(self, pipeline: str, snapshot_id: str) -> dict[str, Any] | None:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    row = self._db.execute(
                        "SELECT record FROM snapshots WHERE pipeline = ? AND id = ?",
                        (pipeline, snapshot_id),
                    ).fetchone()
                    if row is None:
                        self._db.execute("COMMIT")
                        return None
                    record: dict[str, Any] = orjson.loads(row[0])
                    if record["state"] in OPEN_SNAPSHOT_STATES:
                        record["state"] = "cancelled"
                        record["finished_at"] = time.time()
                        mark_tables_cancelled(record)
                        self._db.execute(
                            "UPDATE snapshots SET state = ?, record = ? WHERE pipeline = ? AND id = ?",
                            (record["state"], orjson.dumps(record).decode(), pipeline, snapshot_id),
                        )
                    self._db.execute("COMMIT")
                    return record
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.DatabaseError as exc:
                raise self._failed(exc) from exc

    def schema_versions(self, pipeline: str) -> list[StoredSchemaVersion]:
        rows = self._run(
            "SELECT table_name, version, at, fingerprint, definition, recorded_at "
            "FROM schema_versions WHERE pipeline = ? ORDER BY table_name, version",
            (pipeline,),
        )
        return [
            StoredSchemaVersion(t, v, tuple(orjson.loads(at)), fp, orjson.loads(d), ts)
            for t, v, at, fp, d, ts in rows
        ]

    def add_schema_version(self, pipeline: str, v: StoredSchemaVersion) -> None:
        self._run(
            "INSERT INTO schema_versions "
            "(pipeline, table_name, version, at, fingerprint, definition, recorded_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
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

    def get_meta(self, pipeline: str, key: str) -> str | None:
        rows = self._run(
            "SELECT value FROM meta WHERE pipeline = ? AND key = ?", (pipeline, key)
        )
        return rows[0][0] if rows else None

    def set_meta(self, pipeline: str, key: str, value: str) -> None:
        self._run(
            "INSERT INTO meta (pipeline, key, value) VALUES (?, ?, ?) "
            "ON CONFLICT (pipeline, key) DO UPDATE SET value = excluded.value",
            (pipeline, key, value),
        )

    def pipelines(self) -> list[str]:
        rows = self._run(
            "SELECT pipeline FROM checkpoints UNION SELECT pipeline FROM schema_versions "
            "UNION SELECT pipeline FROM snapshots "
            "UNION SELECT pipeline FROM meta WHERE pipeline != '' ORDER BY 1"
        )
        return [r[0] for r in rows]

    def drop_pipeline(self, pipeline: str) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for table in ("checkpoints", "schema_versions", "meta", "snapshots"):
                    self._db.execute(f"DELETE FROM {table} WHERE pipeline = ?", (pipeline,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def install_id(self) -> str:
        existing = self.get_meta("", "install_id")
        if existing is not None:
            return existing
        new = uuid.uuid4().hex
        self.set_meta("", "install_id", new)
        return new

    def close(self) -> None:
        with self._lock:
            self._db.close()
