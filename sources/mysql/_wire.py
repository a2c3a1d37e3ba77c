"""The MySQL client wire: the only module of cdc that touches PyMySQL's private API.

Theory of operation. PyMySQL does what a client must (the handshake, TLS, the authentication
plugins, text queries) and cdc uses it for that through its public API (``pymysql.connect``,
cursors). Two things a replica and a fast snapshot need are not in that API, and this module
does them on the connection's socket, owning the bytes from then on:

* :class:`BinlogConnection`: a connection logged in by PyMySQL, prepared with public queries
  (checksums, heartbeat period, replica uuid, MariaDB capability and GTID state), that then
  sends COM_REGISTER_SLAVE and COM_BINLOG_DUMP / COM_BINLOG_DUMP_GTID itself and reads the
  binlog packets from the socket in large chunks (:meth:`BinlogConnection.read_event`); it knows
  what it holds, so telling whether an event is waiting costs no system call in a backlog.
* :func:`start_query` / :class:`ResultStream`: a text query whose result set is read as raw
  packets (the snapshot reader decodes rows straight from them with generated code).

Everything private it uses is listed in :data:`PRIVATE_API` (``Connection._sock``,
``_rfile``, ``_execute_command``, ``_force_close``, ``MySQLResult.init_unbuffered_query`` and
``unbuffered_active``); ``pyproject.toml`` pins PyMySQL to the range it was tested with, and
``tests/unit/test_wire_fence.py`` fails loudly, naming the fence, when an installed PyMySQL
lacks one of them. A test also scans ``cdc/``, ``sources/`` and ``sinks/`` so that no other
module reaches into the library.
"""

from __future__ import annotations

import select
import struct
from typing import Any, Final

#: (object, attribute) pairs of PyMySQL's private API this module relies on
PRIVATE_API: Final = (
    ("pymysql.connections.Connection", "_sock"),
    ("pymysql.connections.Connection", "_rfile"),
    ("pymysql.connections.Connection", "_execute_command"),
    ("pymysql.connections.Connection", "_force_close"),
    ("pymysql.connections.MySQLResult", "init_unbuffered_query"),
    ("pymysql.connections.MySQLResult", "unbuffered_active"),
    ("pymysql.connections.MySQLResult", "field_count"),
)
#: PyMySQL versions this module was tested with (pyproject.toml pins the same range)
TESTED_VERSIONS: Final = ">=1.2,<1.3"

COM_QUERY: Final = 0x03
COM_BINLOG_DUMP: Final = 0x12
COM_REGISTER_SLAVE: Final = 0x15
COM_BINLOG_DUMP_GTID: Final = 0x1E
BINLOG_DUMP_NON_BLOCK: Final = 0x01
BINLOG_THROUGH_GTID: Final = 0x04
#: a packet of this payload length continues in the next packet
MAX_PACKET: Final = 0xFFFFFF

_pack_u16 = struct.Struct("<H").pack
_pack_u32 = struct.Struct("<I").pack
_pack_u64 = struct.Struct("<Q").pack


def pymysql_module() -> Any:
    """PyMySQL, imported on first use (an install hint when it is missing is the caller's)."""
    import pymysql

    return pymysql


def raise_error_packet(payload: bytes) -> None:
    """Raise the PyMySQL exception of a server ERR packet (``payload[0] == 0xff``)."""
    pymysql_module().err.raise_mysql_exception(payload)


class BinlogConnection:
    """A replica's binlog connection (see the module docstring). Used by one thread."""

    CHUNK = 256 * 1024

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self._sock: Any = conn._sock
        self._buf = b""
        self._pos = 0
        self.checksum = False

    # -- set-up (public PyMySQL API) -----------------------------------------------------------

    @classmethod
    def connect(cls, settings: dict[str, Any]) -> BinlogConnection:
        """Log in with PyMySQL (its errors propagate)."""
        pymysql = pymysql_module()
        return cls(pymysql.connect(**settings))

    def prepare(
        self,
        *,
        heartbeat_s: float,
        replica_uuid: str,
        mariadb: bool,
        mariadb_gtid_state: str | None = None,
    ) -> None:
        """The session variables a replica sets before its dump: checksums as the server writes
        them, the heartbeat period, the replica uuid, MariaDB's GTID capability (GTID events
        instead of made-up BEGIN queries) and, to dump by GTID, the state to start after."""
        with self.conn.cursor() as cur:
            # the dump thread may wait for us while the pipeline's buffer is full
            cur.execute("SET SESSION net_write_timeout = 3600, net_read_timeout = 3600")
            cur.execute("SELECT @@global.binlog_checksum")
            row = cur.fetchone()
            alg = str(row[0] if row else "NONE")
            alg = alg.decode() if isinstance(alg, bytes) else alg
            if alg.upper() != "NONE":
                cur.execute("SET @master_binlog_checksum = @@global.binlog_checksum")
            self.checksum = alg.upper() == "CRC32"
            cur.execute("SET @slave_uuid = %s, @replica_uuid = %s", (replica_uuid, replica_uuid))
            cur.execute("SET @master_heartbeat_period = %s", (int(heartbeat_s * 1_000_000_000),))
            if mariadb:
                cur.execute("SET @mariadb_slave_capability = 4")
                if mariadb_gtid_state is not None:
                    cur.execute("SET @slave_connect_state = %s", (mariadb_gtid_state,))
                    cur.execute("SET @slave_gtid_strict_mode = 1")
                    cur.execute("SET @slave_gtid_ignore_duplicates = 0")

    # -- commands on the socket ------------------------------------------------------------------

    def _send(self, payload: bytes) -> None:
        self._sock.sendall(len(payload).to_bytes(3, "little") + b"\0" + payload)

    def register(self, server_id: int, host: str, user: str = "", password: str = "", port: int = 0) -> None:
        """COM_REGISTER_SLAVE: the replica shows in SHOW SLAVE HOSTS under ``host``."""
        h, u, p = host.encode()[:60], user.encode()[:60], password.encode()[:60]
        payload = (
            bytes([COM_REGISTER_SLAVE])
            + _pack_u32(server_id)
            + bytes([len(h)])
            + h
            + bytes([len(u)])
            + u
            + bytes([len(p)])
            + p
            + _pack_u16(port)
            + _pack_u32(0)  # replication rank
            + _pack_u32(0)  # master id
        )
        self._send(payload)
        reply = self.read_packet()
        if reply[:1] == b"\xff":
            raise_error_packet(reply)

    def dump(self, server_id: int, file: str, pos: int, *, non_block: bool = False) -> None:
        """COM_BINLOG_DUMP from ``file:pos`` (MariaDB by GTID: ``file=""``, ``pos=4`` after
        :meth:`prepare` with the GTID state)."""
        flags = BINLOG_DUMP_NON_BLOCK if non_block else 0
        self._send(
            bytes([COM_BINLOG_DUMP]) + _pack_u32(pos) + _pack_u16(flags) + _pack_u32(server_id) + file.encode()
        )

    def dump_gtid(self, server_id: int, gtid_set: bytes, *, non_block: bool = False) -> None:
        """MySQL COM_BINLOG_DUMP_GTID with an encoded GTID set (see :func:`encode_mysql_gtids`)."""
        flags = BINLOG_THROUGH_GTID | (BINLOG_DUMP_NON_BLOCK if non_block else 0)
        self._send(
            bytes([COM_BINLOG_DUMP_GTID])
            + _pack_u16(flags)
            + _pack_u32(server_id)
            + _pack_u32(0)  # no file name: the set says where
            + _pack_u64(4)
            + _pack_u32(len(gtid_set))
            + gtid_set
        )

    # -- reading ---------------------------------------------------------------------------------

    def _read(self, n: int) -> bytes:
        pos = self._pos
        buf = self._buf
        end = pos + n
        if end <= len(buf):
            self._pos = end
            return buf[pos:end]
        parts = [buf[pos:]]
        have = len(buf) - pos
        self._buf = b""
        self._pos = 0
        recv = self._sock.recv
        while have < n:
            data = recv(max(self.CHUNK, n - have))
            if not data:
                raise EOFError("the server closed the binlog connection")
            parts.append(data)
            have += len(data)
        data = b"".join(parts)
        if have > n:
            self._buf = data
            self._pos = n
            return data[:n]
        return data

    def read_packet(self) -> bytes:
        """The next packet's payload (packets of 16 MiB - 1 bytes joined with the next)."""
        head = self._read(4)
        n = head[0] | head[1] << 8 | head[2] << 16
        payload = self._read(n)
        if n < MAX_PACKET:
            return payload
        parts = [payload]
        while n == MAX_PACKET:
            head = self._read(4)
            n = head[0] | head[1] << 8 | head[2] << 16
            parts.append(self._read(n))
        return b"".join(parts)

    def read_event(self) -> bytes | None:
        """The next binlog event as the packet holds it: ``b"\\x00" + event`` (parse it from
        offset 1); None at the end of a non-blocking dump. A server error is raised as
        PyMySQL's exception; a closed connection as EOFError."""
        payload = self.read_packet()
        first = payload[:1]
        if first == b"\x00":
            return payload
        if first == b"\xff":
            raise_error_packet(payload)
        if first == b"\xfe" and len(payload) < 9:
            return None
        raise EOFError(f"an unexpected packet 0x{payload[0]:02x} on the binlog connection")

    def pending(self) -> bool:
        """Whether bytes are waiting (in the buffer, in TLS, or on the socket), without blocking.
        True too when the socket is in a state that the next read reports."""
        if len(self._buf) > self._pos:
            return True
        sock = self._sock
        if sock is None:
            return True
        tls_pending = getattr(sock, "pending", None)  # TLS: decrypted bytes held by the SSL object
        if tls_pending is not None and tls_pending():
            return True
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def wait(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for bytes; whether some (or a state to report) arrived."""
        if self.pending():
            return True
        try:
            ready, _, _ = select.select([self._sock], [], [], seconds)
        except (OSError, ValueError):
            return True
        return bool(ready)

    def close(self) -> None:
        self._buf = b""
        self._pos = 0
        try:
            self.conn.close()
        except Exception:
            force_close(self.conn)


def encode_mysql_gtids(sets: list[tuple[str, list[tuple[int, int]]]]) -> bytes:
    """A MySQL GTID set in the COM_BINLOG_DUMP_GTID encoding: ``[(uuid, [(first, last), ...])]``
    with inclusive intervals (untagged GTIDs)."""
    out = [_pack_u64(len(sets))]
    for sid, intervals in sets:
        out.append(bytes.fromhex(sid.replace("-", "")))
        out.append(_pack_u64(len(intervals)))
        for first, last in intervals:
            out.append(_pack_u64(first) + _pack_u64(last + 1))
    return b"".join(out)


# -- raw result sets (the snapshot reader) -----------------------------------------------------


def force_close(conn: Any) -> None:
    """Drop a connection without a goodbye (its socket may hold half a result set)."""
    try:
        conn._force_close()
    except Exception:
        pass


class ResultStream:
    """The rows of one text query, read as raw packets: :func:`start_query` sends the query and
    reads the column definitions through PyMySQL; the caller reads the row packets with
    :meth:`read` / :meth:`read1` and calls :meth:`finish` (whole result read) or
    :meth:`abandon` (the rest still on its way: the connection is closed)."""

    __slots__ = ("conn", "result", "field_count", "_rfile")

    def __init__(self, conn: Any, result: Any) -> None:
        self.conn = conn
        self.result = result
        self.field_count: int = result.field_count
        self._rfile = conn._rfile

    @property
    def active(self) -> bool:
        return bool(self.result.unbuffered_active)

    def read(self, n: int) -> bytes:
        data: bytes = self._rfile.read(n)
        return data

    def read1(self, n: int) -> bytes:
        data: bytes = self._rfile.read1(n)
        return data

    def finish(self) -> None:
        self.result.unbuffered_active = False

    def abandon(self) -> None:
        if self.result.unbuffered_active:
            force_close(self.conn)
        self.result.unbuffered_active = False


def start_query(conn: Any, sql: str) -> ResultStream | None:
    """Send ``sql`` on a PyMySQL connection and read its column definitions; None for a
    statement without a result set. The server's error is raised as PyMySQL's exception."""
    from pymysql.connections import MySQLResult
    from pymysql.constants import COMMAND

    conn._execute_command(COMMAND.COM_QUERY, sql)
    result = MySQLResult(conn)
    result.init_unbuffered_query()
    if not result.unbuffered_active:
        return None
    return ResultStream(conn, result)
