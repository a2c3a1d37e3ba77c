"""The replication connection: the only code that waits on PostgreSQL's replication socket.

Theory of operation. :class:`ReplicationStream` opens a ``replication=database`` connection with
psycopg's ``pq`` layer, runs ``START_REPLICATION SLOT ... LOGICAL <position>`` (pgoutput proto 1,
the publication, ``messages 'true'``) and switches to COPY BOTH. :meth:`~ReplicationStream.read`
(reader thread) then takes frames with non-blocking ``get_copy_data`` until the socket is
drained and ``select`` when it is empty. An XLogData frame's payload (past its fixed 25-byte
header) goes through the pure :func:`.pgoutput.decode` into the :class:`.decoder.PgDecoder`,
which says when a batch is due; this layer adds no per-message work beyond that. Keepalives go
to :func:`.protocol.parse_copy_data`.

When the socket is empty the events gathered are handed over (the whole batch when no
transaction is open, see :meth:`.decoder.PgDecoder.cut`), else the stream waits until the read's
timeout.

*Status updates.* :meth:`ack` (dispatcher thread) only records the checkpointed LSN; the reader
thread sends it as the flush position of the next standby status update, so the slot never
confirms what is not durable in the sink: within a second of an ack, at least every
:data:`STATUS_INTERVAL_S`, and at once when the server asks. The write position reported is the
newest WAL position seen (keepalives and Commits).

*Heartbeats.* While idle, the stream asks the server for a keepalive every ``heartbeat_s`` and
hands the WAL position it reports to the pipeline as a heartbeat batch (no events), so a slot
whose tables are idle pins no WAL.
"""

from __future__ import annotations

import select
import time
from typing import Any

import psycopg
from psycopg import pq
from psycopg.pq.abc import PGconn

from cdc.errors import (
    FatalError,
    FatalSourceError,
    Kind,
    ProtocolError,
    RetriableError,
    RetriableSourceError,
)
from cdc.plugin import Batch

from .decoder import BATCH_EVENTS, PgDecoder
from .lsn import Lsn
from .pgoutput import PgOutputError, decode
from .protocol import Keepalive, parse_copy_data, standby_status_update
from .protocol import ProtocolError as WireError

#: seconds between standby status updates even when nothing changed
STATUS_INTERVAL_S = 10.0
_W = ord("w")
#: a message's WAL start (bytes 1..8 of XLogData), kept on its event as ChangeEvent.pos
_u64 = int.from_bytes


class ReplicationStream:
    """One replication session of a slot, feeding one decoder."""

    def __init__(
        self,
        conninfo: str,
        dsn_display: str,
        slot: str,
        publication: str,
        pipeline: str,
        decoder: PgDecoder,
        heartbeat_s: float,
        config_file: str = "CONFIG",
    ) -> None:
        self.config_file = config_file
        self.conninfo = conninfo
        self.dsn_display = dsn_display
        self.slot = slot
        self.publication = publication
        self.pipeline = pipeline
        self.decoder = decoder
        self.heartbeat_s = heartbeat_s
        self._repl: PGconn | None = None
        self._received = Lsn(0)  # newest WAL position a keepalive reported
        self._acked = Lsn(0)  # set by ack(); read by the reader thread
        self._sent_flush = Lsn(0)
        self._last_status = 0.0
        self._last_heartbeat_request = 0.0
        self._last_heartbeat_position = Lsn(0)

    @property
    def received(self) -> Lsn:
        """The newest WAL position seen: keepalives' and the last Commit's."""
        position = self.decoder.position
        return position if position > self._received else self._received

    # -- start --------------------------------------------------------------------------------

    def start(self, start: Lsn) -> None:
        """Connect and start streaming at ``start``. Raises FatalError (authentication refused,
        slot gone) or RetriableError (unreachable, slot in use)."""
        repl = pq.PGconn.connect(self.conninfo.encode())
        if repl.status != pq.ConnStatus.OK:
            message = repl.get_error_message().strip()
            repl.finish()
            # a failed connection attempt has no result, so no SQLSTATE: told by its text
            if (
                "password authentication failed" in message
                or "no pg_hba.conf entry for replication" in message
            ):
                raise FatalSourceError(
                    f"cannot open a replication connection to {self.dsn_display}: {message}; "
                    "pg_hba.conf must allow the role (a `host` line for the database, or "
                    "`replication` in older setups)",
                    kind=Kind.SOURCE_AUTH,
                )
            raise RetriableSourceError(
                f"cannot open a replication connection to {self.dsn_display}: {message}",
            )
        pubs = self.publication.replace("'", "''")
        command = (
            f'START_REPLICATION SLOT "{self.slot}" LOGICAL {start} '
            f"(proto_version '1', publication_names '\"{pubs}\"', messages 'true')"
        )
        repl.send_query(command.encode())
        result = repl.get_result()
        if result is None or result.status != pq.ExecStatus.COPY_BOTH:
            message = repl.get_error_message().strip()
            state = result.error_field(pq.DiagnosticField.SQLSTATE) if result is not None else None
            repl.finish()
            sqlstate = state.decode() if state else ""
            if sqlstate == "55006":
                raise RetriableSourceError(
                    f"replication slot {self.slot} is in use by another connection: {message}; "
                    "is another cdc instance running this pipeline?",
                    kind=Kind.SLOT_IN_USE,
                )
            if sqlstate in ("42704", "55000"):
                raise FatalSourceError(
                    f"cannot stream from replication slot {self.slot}: {message}; to recover, "
                    f"run `cdc drop {self.config_file} {self.pipeline} --yes` and start again",
                    kind=Kind.SLOT_LOST,
                )
            raise RetriableSourceError(f"START_REPLICATION failed: {message}", kind=Kind.SOURCE_ERROR)
        repl.nonblocking = 1
        self._repl = repl
        self._received = start
        self._acked = start
        self._sent_flush = start
        self._last_heartbeat_position = start
        self._last_status = time.monotonic()
        self._last_heartbeat_request = time.monotonic()

    # -- reading --------------------------------------------------------------------------------

    def read(self, timeout: float) -> Batch | None:
        """The next batch: events, a heartbeat, or None when ``timeout`` passed with neither."""
        repl = self._repl
        if repl is None:
            raise RetriableSourceError("the replication connection is closed")
        deadline = time.monotonic() + timeout
        get = repl.get_copy_data
        decoder = self.decoder
        feed = decoder.feed
        buf: Any = None
        try:
            while True:
                try:
                    nbytes, buf = get(1)
                except psycopg.OperationalError as exc:
                    raise self._lost(exc) from exc
                if nbytes > 0:
                    if buf[0] == _W:
                        # tobytes: far cheaper than bytes(memoryview)
                        batch = feed(decode(buf[25:].tobytes()), nbytes, _u64(buf[1:9], "big"))
                        if batch is not None:
                            self._housekeeping()  # status updates go out under sustained load too
                            return batch
                        continue
                    self._on_keepalive(parse_copy_data(buf))
                    continue
                if nbytes < 0:
                    raise self._lost(None)
                # Nothing buffered: hand over what we have, else wait for the socket.
                pending = decoder.pending
                if (pending and not decoder.in_tx) or pending >= BATCH_EVENTS:
                    batch = decoder.cut()
                    self._housekeeping()
                    return batch
                self._housekeeping()
                heartbeat = self._heartbeat()
                if heartbeat is not None:
                    return heartbeat
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                try:
                    ready, _, _ = select.select([repl.socket], [], [], min(remaining, 0.5))
                    if ready:
                        repl.consume_input()
                except (OSError, ValueError, psycopg.OperationalError) as exc:
                    raise self._lost(exc) from exc
        except (PgOutputError, WireError) as exc:
            # Bytes that do not decode: retrying from the checkpoint would read them again, so
            # the pipeline stops here, saying where (nothing after the checkpoint was confirmed).
            at = int.from_bytes(buf[1:9], "big") if buf is not None and len(buf) >= 9 else 0
            raise ProtocolError(
                f"cannot decode the replication message at WAL {Lsn(at)} (transaction at "
                f"{Lsn(decoder.tx_lsn)}): {exc}. This is a bug or a pgoutput feature this build "
                "does not know; the checkpoint stays before it",
                position=str(Lsn(at)),
            ) from exc

    def _lost(self, exc: BaseException | None) -> FatalError | RetriableError:
        """The stream ended: classified by the SQLSTATE of the server's error when it sent one
        (42704: the publication was dropped, the only object looked up by name while the slot
        is held; 55000: the slot was invalidated), else a lost connection (retriable)."""
        repl = self._repl
        detail = repl.get_error_message().strip() if repl is not None else ""
        sqlstate = ""
        if repl is not None and (not detail or detail == "no error details available"):
            # a server error ending COPY BOTH is in the next result, not on the connection
            try:
                res = repl.get_result()
                if res is not None and res.status == pq.ExecStatus.FATAL_ERROR:
                    detail = res.get_error_message().strip() or detail
                    state = res.error_field(pq.DiagnosticField.SQLSTATE)
                    sqlstate = state.decode() if state else ""
            except Exception:
                pass
        if detail == "no error details available":
            detail = ""
        if not detail and exc is not None:
            detail = str(exc)
        if sqlstate == "42704":
            return FatalSourceError(
                f"the replication stream ended: {detail.splitlines()[0]}; pgoutput reads the "
                "publication as of each change, so a slot created before its publication cannot "
                "stream the changes in between: create the publication first, then the slot "
                f"(or run `cdc drop {self.config_file} {self.pipeline} --yes` and let cdc create both)",
                kind=Kind.SOURCE_CONFIG,
            )
        if sqlstate == "55000":
            return FatalSourceError(
                f"the replication stream ended: {detail}; to recover, run `cdc drop {self.config_file} "
                f"{self.pipeline} --yes` and start again (snapshot.mode: initial re-reads the "
                "tables)",
                kind=Kind.SLOT_LOST,
            )
        detail = detail or "server closed the stream"
        return RetriableSourceError(
            f"lost the replication connection to {self.dsn_display}: {detail}",
        )

    # -- status updates and heartbeats ------------------------------------------------------------

    def _on_keepalive(self, msg: object) -> None:
        if isinstance(msg, Keepalive):
            wal_end = Lsn(msg.wal_end)
            if wal_end > self._received:
                self._received = wal_end
            if msg.reply_requested:
                self._send_status(reply=False)

    def _send_status(self, reply: bool) -> None:
        repl = self._repl
        if repl is None:
            return
        flush = self._acked
        payload = standby_status_update(self.received, flush, flush, reply=reply)
        try:
            repl.put_copy_data(payload)
            repl.flush()
        except psycopg.OperationalError as exc:
            raise self._lost(exc) from exc
        self._sent_flush = flush
        self._last_status = time.monotonic()

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if (self._acked != self._sent_flush and now - self._last_status >= 1.0) or (
            now - self._last_status >= STATUS_INTERVAL_S
        ):
            self._send_status(reply=False)

    def _heartbeat(self) -> Batch | None:
        """While idle, ask for the server's WAL position every heartbeat_s and hand it over."""
        decoder = self.decoder
        if decoder.in_tx or decoder.pending:
            return None
        received = self.received
        if received > decoder.position and received > self._last_heartbeat_position:
            self._last_heartbeat_position = received
            return Batch([], received, None, 64)
        now = time.monotonic()
        if now - self._last_heartbeat_request >= self.heartbeat_s:
            self._last_heartbeat_request = now
            self._send_status(reply=True)
        return None

    def request_position(self) -> None:
        """Ask the server for its position at the reader's next idle turn."""
        self._last_heartbeat_request = 0.0

    def keepalive(self) -> None:
        """The reader is waiting on the pipeline's full buffer: keep the server's timeout away."""
        if time.monotonic() - self._last_status >= STATUS_INTERVAL_S / 2:
            self._send_status(reply=False)

    def ack(self, position: Lsn) -> None:
        """Record a checkpointed position (any thread); the reader sends it."""
        if position > self._acked:
            self._acked = position

    # -- closing ----------------------------------------------------------------------------------

    def close(self) -> None:
        """Send a last status update with the acknowledged position, then disconnect."""
        repl = self._repl
        self._repl = None
        if repl is None:
            return
        try:
            if repl.status == pq.ConnStatus.OK:
                payload = standby_status_update(self.received, self._acked, self._acked)
                repl.put_copy_data(payload)
                repl.flush()
        except Exception:
            pass
        try:
            repl.finish()
        except Exception:
            pass
