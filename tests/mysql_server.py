"""A throwaway local MariaDB server, for the test suite and the benchmark.

    from tests.mysql_server import LocalMariaDB

    with LocalMariaDB() as db:            # mariadb-install-db + mariadbd on a free port
        db.execute("CREATE DATABASE shop")
        db.dsn()                          # mysql://root@127.0.0.1:PORT

The server lives in its own folder (``base_dir``, by default a fresh temp folder): ``data/``
(the datadir, with the binlogs ``mysql-bin.NNNNNN``), ``mariadb.log`` (the error log) and the
Unix socket. It listens on 127.0.0.1 only; ``root`` logs in over TCP without a password. The
binlog is on with the settings change data capture needs (``binlog_format=ROW``,
``binlog_row_image=FULL``, ``binlog_row_metadata=FULL``, ``server_id=1``); ``gtid_domain_id``
and ``gtid_strict_mode`` turn GTID positions on; ``settings`` adds or overrides any option
(``{"binlog-format": "STATEMENT"}``). Commits are written to the OS at once but never fsynced:
the data survives a kill of the server process (:meth:`kill`), not of the machine. Throwaway
servers only.

mariadbd refuses to run as root: when this process is root, the folder is made under /tmp and
owned by the ``mysql`` OS user, and install and server run as that user.

Readiness and shutdown are deadline-based: :meth:`start` polls a login until it succeeds (or
the process exits, with the log tail in the error), :meth:`stop` sends SIGTERM and waits for
the exit, :meth:`kill` sends SIGKILL (a crash: the next start runs InnoDB recovery).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from cdc_local.postgres import free_port

__all__ = ["LocalMariaDB", "MariaDBStartError", "free_port"]

DEFAULT_SETTINGS: dict[str, str] = {
    "log-bin": "mysql-bin",
    "binlog-format": "ROW",
    "binlog-row-image": "FULL",
    "binlog-row-metadata": "FULL",
    "server-id": "1",
    "character-set-server": "utf8mb4",
    "collation-server": "utf8mb4_general_ci",
    "innodb-buffer-pool-size": "128M",
    "innodb-log-file-size": "48M",
    "innodb-flush-log-at-trx-commit": "2",  # written at each commit: survives kill -9, no fsync
    "sync-binlog": "0",
    "skip-name-resolve": "",
    "max-connections": "200",
}
_INSTALL_SETTINGS = ("innodb-log-file-size", "character-set-server", "collation-server")
_START_ATTEMPTS = 5
_LOG_TAIL_LINES = 40


class MariaDBStartError(RuntimeError):
    """Install or start failed; the message carries the tail of the output or log."""


def _find(program: str, *candidates: str) -> str:
    found = shutil.which(program)
    if found:
        return found
    for c in candidates:
        if os.access(c, os.X_OK):
            return c
    raise FileNotFoundError(
        f"{program} not found: apt-get install mariadb-server (scripts/setup-test-env.sh does it)"
    )


def _emergency_stop(pid_box: list[int | None]) -> None:
    pid = pid_box[0]
    if pid is not None:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


class LocalMariaDB:
    """A throwaway MariaDB server on 127.0.0.1."""

    def __init__(
        self,
        *,
        port: int | None = None,
        settings: Mapping[str, str | None] | None = None,
        gtid_domain_id: int | None = None,
        gtid_strict_mode: bool = False,
        server_id: int = 1,
        base_dir: str | None = None,
    ) -> None:
        self.mariadbd = _find("mariadbd", "/usr/sbin/mariadbd")
        self.install_db = _find("mariadb-install-db", "/usr/bin/mariadb-install-db")
        self._fixed_port = port is not None
        self.port = port or 0
        merged: dict[str, str | None] = {**DEFAULT_SETTINGS, "server-id": str(server_id)}
        if gtid_domain_id is not None:
            merged["gtid-domain-id"] = str(gtid_domain_id)
        if gtid_strict_mode:
            merged["gtid-strict-mode"] = "ON"
        merged.update(settings or {})
        #: option name -> value ("" for a flag, None to leave the option out)
        self.settings = merged
        self._given_base = base_dir
        self._base: Path | None = Path(base_dir) if base_dir else None
        self._created_base = False
        self._user: pwd.struct_passwd | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_fh: IO[bytes] | None = None
        self._pid_box: list[int | None] = [None]
        self._finalizer = weakref.finalize(self, _emergency_stop, self._pid_box)

    # -- paths -------------------------------------------------------------------------------------

    @property
    def base_dir(self) -> Path:
        if self._base is None:
            raise RuntimeError("LocalMariaDB not started yet: no folder")
        return self._base

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "mariadb.log"

    @property
    def socket_path(self) -> Path:
        return self.base_dir / "mariadb.sock"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    def dsn(self, user: str = "root", password: str = "") -> str:
        if not self.port:
            raise RuntimeError("LocalMariaDB not started yet: no port")
        auth = f"{user}:{password}" if password else user
        return f"mysql://{auth}@127.0.0.1:{self.port}"

    def __repr__(self) -> str:
        return f"<LocalMariaDB port={self.port or '-'} {'running' if self.running else 'stopped'}>"

    # -- clients -----------------------------------------------------------------------------------

    def connect(self, database: str | None = None, **kw: Any) -> Any:
        import pymysql

        params: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.port,
            "user": "root",
            "password": "",
            "charset": "utf8mb4",
            "autocommit": True,
            "connect_timeout": 10,
        }
        if database:
            params["database"] = database
        params.update(kw)
        return pymysql.connect(**params)

    def execute(self, *statements: str | tuple[str, Any], database: str | None = None) -> None:
        """Run statements one by one (autocommit)."""
        conn = self.connect(database)
        try:
            with conn.cursor() as cur:
                for st in statements:
                    if isinstance(st, tuple):
                        cur.execute(st[0], st[1])
                    else:
                        cur.execute(st)
        finally:
            conn.close()

    def query(self, statement: str, args: Any = None, database: str | None = None) -> list[tuple[Any, ...]]:
        conn = self.connect(database)
        try:
            with conn.cursor() as cur:
                cur.execute(statement, args)
                return list(cur.fetchall())
        finally:
            conn.close()

    # -- lifecycle ---------------------------------------------------------------------------------

    def _as_user(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"cwd": str(self.base_dir)}
        env = {k: v for k, v in os.environ.items() if not k.startswith("MYSQL")}
        if self._user is not None:
            kw.update(user=self._user.pw_uid, group=self._user.pw_gid, extra_groups=[])
            env["HOME"] = str(self.base_dir)
            env["USER"] = env["LOGNAME"] = self._user.pw_name
        kw["env"] = env
        return kw

    def _options(self, names: tuple[str, ...] | None = None) -> list[str]:
        out = []
        for name, value in self.settings.items():
            if names is not None and name not in names:
                continue
            if value is None:
                continue
            out.append(f"--{name}" if value == "" else f"--{name}={value}")
        return out

    def _prepare(self) -> None:
        if os.geteuid() == 0:
            try:
                self._user = pwd.getpwnam("mysql")
            except KeyError:
                raise MariaDBStartError("running as root and there is no `mysql` OS user to run mariadbd as") from None
        if self._base is None:
            parent = "/tmp" if self._user is not None else None
            self._base = Path(tempfile.mkdtemp(prefix="cdc-mariadb-", dir=parent))
            self._created_base = True
        else:
            self._base.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            os.chown(self._base, self._user.pw_uid, self._user.pw_gid)
        if (self.data_dir / "mysql").is_dir():
            return
        cmd = [
            self.install_db,
            "--no-defaults",
            f"--datadir={self.data_dir}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--skip-name-resolve",
            *self._options(_INSTALL_SETTINGS),
        ]
        if self._user is not None:
            cmd.append(f"--user={self._user.pw_name}")
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120, **self._as_user())
        if proc.returncode != 0:
            raise MariaDBStartError(
                f"mariadb-install-db failed with exit code {proc.returncode}:\n"
                + "\n".join(proc.stdout.splitlines()[-_LOG_TAIL_LINES:])
            )

    def start(self, timeout: float = 60) -> LocalMariaDB:
        """Install (first time) and start; returns when root can log in over TCP."""
        if self.running:
            return self
        try:
            if self._base is None or not (self.data_dir / "mysql").is_dir():
                self._prepare()
            elif self._user is None and os.geteuid() == 0:
                self._user = pwd.getpwnam("mysql")
            attempts = 1 if self._fixed_port else _START_ATTEMPTS
            for attempt in range(1, attempts + 1):
                if not self._fixed_port and (attempt > 1 or not self.port):
                    self.port = free_port()
                try:
                    self._launch(timeout)
                    return self
                except MariaDBStartError as exc:
                    taken = "Address already in use" in str(exc) or "Bind on TCP/IP port" in str(exc)
                    if not taken or attempt == attempts:
                        raise
            raise AssertionError("unreachable")  # pragma: no cover
        except BaseException:
            if self._created_base:
                self.cleanup()
            raise

    def _launch(self, timeout: float) -> None:
        cmd = [
            self.mariadbd,
            "--no-defaults",
            f"--datadir={self.data_dir}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--socket={self.socket_path}",
            f"--pid-file={self.base_dir / 'mariadb.pid'}",
            f"--log-error={self.log_path}",
            *self._options(),
        ]
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._close_log()
        self._log_fh = open(self.base_dir / "mariadb.out", "ab")  # noqa: SIM115 - open while running
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log_fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **self._as_user(),
        )
        self._pid_box[0] = self._proc.pid
        try:
            self._wait_ready(timeout, log_start)
        except BaseException:
            self._signal(signal.SIGKILL)
            self._wait_exit(30)
            raise

    def _wait_ready(self, timeout: float, log_start: int) -> None:
        import pymysql

        assert self._proc is not None
        deadline = time.monotonic() + timeout
        delay = 0.02
        last = ""
        while True:
            code = self._proc.poll()
            if code is not None:
                raise MariaDBStartError(
                    f"mariadbd (port {self.port}) exited with code {code} at start; log tail:\n"
                    f"{self._log_since(log_start)}"
                )
            try:
                conn = self.connect(connect_timeout=5)
                conn.close()
                return
            except pymysql.err.MySQLError as exc:
                last = str(exc)
            if time.monotonic() >= deadline:
                raise MariaDBStartError(
                    f"mariadbd (port {self.port}) did not accept logins within {timeout:.0f}s "
                    f"(last error: {last}); log tail:\n{self._log_since(log_start)}"
                )
            time.sleep(delay)  # polling back-off, not a fixed wait
            delay = min(delay * 2, 0.2)

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-_LOG_TAIL_LINES:]) or "(empty log)"

    def _signal(self, sig: int) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def _wait_exit(self, timeout: float) -> bool:
        if self._proc is None:
            return True
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        self._pid_box[0] = None
        self._close_log()
        return True

    def stop(self, timeout: float = 60) -> None:
        """Shut down cleanly (SIGTERM); SIGKILL if it does not exit within ``timeout``."""
        if self._proc is None or self._proc.poll() is not None:
            self._pid_box[0] = None
            self._close_log()
            return
        self._signal(signal.SIGTERM)
        if not self._wait_exit(timeout):
            self._signal(signal.SIGKILL)
            self._wait_exit(30)
            raise MariaDBStartError(f"mariadbd did not stop within {timeout:.0f}s; killed it")

    def kill(self) -> None:
        """SIGKILL the server (a crash; the next start recovers)."""
        self._signal(signal.SIGKILL)
        self._wait_exit(30)

    def restart(self, timeout: float = 60) -> LocalMariaDB:
        """Stop and start again on the same port and data."""
        self.stop(timeout)
        self._fixed_port = True
        return self.start(timeout)

    def _close_log(self) -> None:
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def cleanup(self) -> None:
        """Stop the server (else kill it) and remove the folder it was given or made."""
        try:
            self.stop(timeout=30)
        except Exception:
            self.kill()
        if self._base is not None:
            if self._created_base:
                shutil.rmtree(self._base, ignore_errors=True)
            else:
                shutil.rmtree(self.data_dir, ignore_errors=True)
        self._base = Path(self._given_base) if self._given_base else None
        self._created_base = False

    def __enter__(self) -> LocalMariaDB:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
