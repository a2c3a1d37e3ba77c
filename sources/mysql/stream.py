"""The binlog connection: the only code that waits on the server's replication socket.

Theory of operation. :class:`BinlogStream` opens a connection with :mod:`._wire` (the one
module touching PyMySQL's private API), prepares the session as a replica (checksums, the
heartbeat period, MariaDB's GTID capability and start state), registers under the pipeline's
replica server id and name, and asks for the dump: by binlog coordinates, or by GTID (MariaDB:
the ``slave_connect_state`` the session set; MySQL: the encoded GTID set). The first events are
read at once, up to the first ROTATE, so a refused dump (a purged binlog, a missing grant) fails
the start rather than the first read.

:meth:`BinlogStream.read` (reader thread) then parses each packet (:class:`.protocol.BinlogReader`,
which verifies CRC32) and feeds it to the :class:`.decoder.MySQLDecoder`, which says when a batch
is due. When no transaction is open and nothing is buffered, what the decoder gathered is handed
over (:meth:`.decoder.MySQLDecoder.idle_batch`: the events, or the position as a heartbeat), else
the stream waits for the socket until the read's timeout. The server sends a heartbeat every
:data:`SERVER_HEARTBEAT_S` while it has nothing to send; a connection silent for
:data:`DEAD_AFTER_S` counts as lost.

*Errors* are classified by the server's error number (:mod:`.catalog`): a refused dump of a
purged binlog is fatal (``binlog_purged``), another replica with this server id is fatal
(``server_id_collision``), missing grants and refused logins are fatal; a lost connection is
retriable (``source_unreachable``).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from cdc.errors import FatalError, FatalSourceError, Kind, RetriableError, RetriableSourceError
from cdc.plugin import Batch

from . import _wire, catalog
from . import protocol as P
from .decoder import MySQLDecoder
from .position import GtidPosition, MySQLGtidSet, Position

#: seconds the server waits before sending a heartbeat while it has nothing to send
SERVER_HEARTBEAT_S = 1.0
#: seconds without any packet from the server before the connection counts as lost
DEAD_AFTER_S = 30.0
#: most seconds the start reads to the dump's first ROTATE
START_READ_S = 30.0


class BinlogStream:
    """One binlog dump session, feeding one decoder."""

    def __init__(
        self,
        settings: dict[str, Any],
        dsn_display: str,
        decoder: MySQLDecoder,
        *,
        server_id: int,
        tag: str,
        mariadb: bool,
        way_back: str,
    ) -> None:
        self.settings = dict(settings)
        self.settings.pop("autocommit", None)
        self.settings["read_timeout"] = int(max(DEAD_AFTER_S * 2, self.settings.get("read_timeout") or 0))
        self.dsn_display = dsn_display
        self.decoder = decoder
        self.server_id = server_id
        self.tag = tag
        self.mariadb = mariadb
        #: how to recover from a lost position (said in the fatal errors)
        self.way_back = way_back
        from pymysql.err import MySQLError  # the source checked at open that PyMySQL is there

        self._server_error: type[Exception] = MySQLError
        self._wire: _wire.BinlogConnection | None = None
        self._reader = P.BinlogReader()
        self._last_recv = 0.0

    # -- start ------------------------------------------------------------------------------------

    def start(self, start: Position) -> None:
        """Connect, register as a replica and dump the binlog from ``start``; the decoder starts
        there too. Raises :class:`FatalError` / :class:`RetriableError` as the module says."""
        MySQLError = self._server_error
        self.close()
        self.decoder.start(start)
        settings = self.settings
        try:
            wire = _wire.BinlogConnection.connect(settings)
        except MySQLError as exc:
            raise self._error(exc) from exc
        except OSError as exc:
            raise RetriableSourceError(
                f"cannot connect to {self.dsn_display}: {exc}"
            ) from exc
        self._wire = wire
        mariadb = self.mariadb
        try:
            wire.prepare(
                heartbeat_s=min(settings["read_timeout"] / 2.0, SERVER_HEARTBEAT_S),
                replica_uuid=str(uuid.uuid5(uuid.NAMESPACE_URL, f"cdc:{self.tag}")),
                mariadb=mariadb,
                mariadb_gtid_state=start.gtids if isinstance(start, GtidPosition) and mariadb else None,
            )
            wire.register(self.server_id, self.tag)
            if isinstance(start, GtidPosition) and not mariadb:
                members = MySQLGtidSet.parse(start.gtids).intervals()
                if any(tag for _, tag, _ in members):
                    raise FatalSourceError(
                        f"the GTID set {start.gtids} holds tagged GTIDs (MySQL 8.4 tags), which "
                        "this build cannot resume from; use positions: file",
                        kind=Kind.SOURCE_CONFIG,
                    )
                encoded = _wire.encode_mysql_gtids([(sid, ivs) for sid, _, ivs in members])
                wire.dump_gtid(self.server_id, encoded)
            elif isinstance(start, GtidPosition):
                wire.dump(self.server_id, "", 4)
            else:
                wire.dump(self.server_id, start.file, start.pos)
        except MySQLError as exc:
            self.close()
            raise self._error(exc) from exc
        except (OSError, EOFError) as exc:
            self.close()
            raise RetriableSourceError(
                f"lost the binlog connection to {self.dsn_display}: {exc}"
            ) from exc
        except FatalError:
            self.close()
            raise
        self._reader = P.BinlogReader(checksum=wire.checksum, file=start.file)
        self._last_recv = time.monotonic()
        # Start the dump now: a refused dump (purged binlog, missing grant) fails the start.
        deadline = time.monotonic() + START_READ_S
        while True:
            ev = self._fetch()
            self.decoder.feed(ev)
            if ev.__class__ is P.Rotate or time.monotonic() > deadline:
                break

    # -- reading ----------------------------------------------------------------------------------

    def read(self, timeout: float) -> Batch | None:
        """The next batch: events, a heartbeat position, or None when ``timeout`` passed."""
        wire = self._wire
        if wire is None:
            raise RetriableSourceError("the binlog connection is closed")
        decoder = self.decoder
        feed = decoder.feed
        deadline = 0.0
        while True:
            if not decoder.in_tx and not wire.pending():
                batch = decoder.idle_batch()
                if batch is not None:
                    return batch
                now = time.monotonic()
                if not deadline:
                    deadline = now + timeout
                if now - self._last_recv > DEAD_AFTER_S:
                    raise RetriableSourceError(
                        f"no data and no heartbeat from {self.dsn_display} for {DEAD_AFTER_S:.0f} s",
                    )
                remaining = deadline - now
                if remaining <= 0:
                    return None
                if not wire.wait(min(remaining, 0.5)):
                    continue
            batch = feed(self._fetch())
            if batch is not None:
                return batch

    def _fetch(self) -> P.Event:
        wire = self._wire
        if wire is None:
            raise RetriableSourceError("the binlog connection is closed")
        try:
            packet = wire.read_event()
        except self._server_error as exc:
            raise self._error(exc) from exc
        except (OSError, EOFError) as exc:
            raise RetriableSourceError(
                f"lost the binlog connection to {self.dsn_display}: {exc}"
            ) from exc
        if packet is None:
            raise RetriableSourceError(
                f"{self.dsn_display} ended the binlog stream (server shutting down?)",
            )
        self._last_recv = time.monotonic()
        return self._reader.parse(packet, 1)

    # -- errors -----------------------------------------------------------------------------------

    def _error(self, exc: Exception) -> FatalError | RetriableError:
        """A server error on the binlog connection, classified by its error number."""
        code = catalog.error_code(exc)
        text = catalog.error_text(exc)
        position = self.decoder.position()
        if code == catalog.ER_MASTER_FATAL_READING_BINLOG:
            # one error number for every reason the dump stops; the reason is only in the text
            if "same server_uuid" in text or "same server_id" in text:
                return self._collision(text)
            return FatalSourceError(
                f"the server cannot send the binlog from the last checkpoint {position}: {text}; "
                f"if the binlog was purged, the changes after the checkpoint are gone; {self.way_back}",
                kind=Kind.BINLOG_PURGED,
                position=str(position),
            )
        if code == catalog.ER_SLAVE_SAME_ID:
            return self._collision(text)
        if code == catalog.ER_SPECIFIC_ACCESS_DENIED:
            return FatalSourceError(
                f"the server refused to send the binlog: {text}; GRANT REPLICATION SLAVE ON *.* "
                "to the pipeline's user",
                kind=Kind.SOURCE_GRANTS,
            )
        if code in (catalog.ER_ACCESS_DENIED, catalog.ER_DBACCESS_DENIED):
            return FatalSourceError(f"MySQL refused the login to {self.dsn_display}: {text}", kind=Kind.SOURCE_AUTH)
        return RetriableSourceError(
            f"lost the binlog connection to {self.dsn_display}: {text}"
        )

    def _collision(self, text: str) -> FatalError:
        return FatalSourceError(
            f"another replica connected to the server with this pipeline's server_id "
            f"{self.server_id} ({text}): two replicas with one id disconnect each other; give "
            "this pipeline (or the other replica) another `source.server_id`",
            kind=Kind.SERVER_ID_COLLISION,
        )

    # -- closing ----------------------------------------------------------------------------------

    def close(self) -> None:
        wire = self._wire
        self._wire = None
        if wire is not None:
            wire.close()
