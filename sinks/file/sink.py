"""The file sink: JSON Lines files in one folder.

Layout of ``PATH`` (the ``path`` setting)::

    events-000001.jsonl   one event per line (``event.json`` + ``\\n``), in delivery order
    events-000002.jsonl   started when the previous file would pass ``rotate_mb`` MiB
    schemas.jsonl         one schema definition per line, each version at least once,
                          before the first event that uses it
    dropped-20261128T134501Z/   files moved away by ``cdc drop`` (never deleted)

Theory of operation
-------------------
Events are appended through one big buffered file object (one ``b"".join`` per ``write``
call). Nothing is promised until :meth:`FileSink.flush`, which pushes the buffers to the OS and
``fsync``\\s, in this order: ``schemas.jsonl`` (so no durable event names a schema that is not
durable), the events file, and the folder when a file was created since the last flush (a new
file's directory entry is only durable once the folder is fsynced). A file left behind by a
rotation is fsynced when it is closed. The pipeline saves its checkpoint only after ``flush``
returns, so a saved checkpoint never covers bytes that a power loss could take away: this
ordering is what makes delivery at-least-once.

``flush`` returns a *resume token* ``"events-NNNNNN.jsonl:<size>"``: the current file and its
durable size. The pipeline keeps it with the checkpoint. After a crash it reopens the sink
with the token of the checkpoint it resumes from; everything past that point will be
delivered again, so :meth:`FileSink.open` truncates the named file to that size and removes the
events files started after it. The folder then holds exactly the events up to the checkpoint
and the replay appends the rest: no duplicates, even after ``kill -9``.

Without a token (first start, or the token's file is gone) the only repair is the torn-line
rule: a last line without its ``\\n`` (a write cut by a crash) is cut off before appending.
``schemas.jsonl`` gets the same rule; its lines are never removed otherwise (an extra schema
line is harmless; schema versions already present are not written again).

Errors: an ``OSError`` while writing or flushing (``ENOSPC``, ``EIO``, ``EFBIG``) is a
:class:`~cdc.errors.RetriableError` of kind ``sink_io``: the pipeline reopens the sink from the
last checkpoint's token, which truncates whatever was half written. A path that is not a
folder, or one that cannot be created or written for lack of permission, is a
:class:`~cdc.errors.FatalError`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from typing import IO, TYPE_CHECKING, Any

import orjson

from cdc.errors import (
    CDCError,
    FatalError,
    FatalSinkError,
    Kind,
    RetriableError,
    RetriableSinkError,
)
from cdc.events import encode_line_chunks
from cdc.plugin import PluginContext, Sink
from cdc.verify import EventFold
from sinks.file.config import FileConfig

if TYPE_CHECKING:
    from cdc.events import ChangeEvent
    from cdc.schema import SchemaVersion

__all__ = [
    "FileSink",
    "FileConfig",
    "FolderReader",
    "SCHEMAS_FILE",
    "events_file_name",
    "follow_folder",
]

SCHEMAS_FILE = "schemas.jsonl"
_EVENTS_RE = re.compile(r"^events-(\d{6,})\.jsonl$")
_BUFFER = 1 << 20  # bytes of Python-side buffering for the events file
_MIB = 1024 * 1024
# errnos that no retry can fix: a person must change the folder or its permissions
_PERMANENT = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR}


def events_file_name(index: int) -> str:
    """``events-000001.jsonl`` for 1 (six digits, more only past 999999)."""
    return f"events-{index:06d}.jsonl"


def _events_files(folder: str) -> list[tuple[int, str]]:
    """``(index, name)`` of the events files in ``folder``, in delivery order."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        m = _EVENTS_RE.match(name)
        if m:
            found.append((int(m.group(1)), name))
    found.sort()
    return found


def follow_folder(folder: str, stop: threading.Event, from_end: bool = True) -> Iterator[bytes]:
    """Yield each complete event line as it lands in the folder, across rotation (the next
    file is opened once the current one is read to its end and a newer one exists) and
    across a restart's cut (a file that shrank is read again from its new end). Starts at
    the end of the newest file (``tail -f``), or at the first file when not ``from_end``.
    Reads only; runs until ``stop`` is set."""
    index: int | None = None
    offset = 0
    files = _events_files(folder)
    if files and from_end:  # the start is taken now, not at the first next()
        index = files[-1][0]
        with contextlib.suppress(OSError):
            offset = os.path.getsize(os.path.join(folder, events_file_name(index)))
    return _follow(folder, stop, index, offset)


def _follow(folder: str, stop: threading.Event, index: int | None, offset: int) -> Iterator[bytes]:
    partial = b""
    while not stop.is_set():
        files = _events_files(folder)
        if not files:
            stop.wait(0.1)
            continue
        if index is None:  # no file when following began: every event is new
            index, offset = files[0][0], 0
        path = os.path.join(folder, events_file_name(index))
        try:
            size = os.path.getsize(path)
            if size < offset:  # cut after a restart: what follows is delivered again
                offset, partial = size, b""
            with open(path, "rb") as fh:
                fh.seek(offset)
                data = fh.read()
        except FileNotFoundError:
            data = b""
        if data:
            offset += len(data)
            lines = (partial + data).split(b"\n")
            partial = lines.pop()
            yield from (line for line in lines if line)
            continue
        later = [i for i, _ in files if i > index]
        if later:
            index, offset, partial = later[0], 0, b""
            continue
        stop.wait(0.1)


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _cut_torn_line(path: str) -> int:
    """Cut a last line that lacks its ``\\n``; return how many bytes were cut."""
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        # Search backwards for the last complete line's newline.
        end = size
        keep = 0
        chunk = 1 << 16
        while end > 0:
            start = max(0, end - chunk)
            f.seek(start)
            block = f.read(end - start)
            i = block.rfind(b"\n")
            if i >= 0:
                keep = start + i + 1
                break
            end = start
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
        return size - keep


def _read_schemas(path: str) -> list[dict[str, Any]]:
    """The complete, valid definitions in ``schemas.jsonl`` (a torn last line is ignored)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    result: list[dict[str, Any]] = []
    lines = data.split(b"\n")
    # the part after the last "\n" is empty, or a torn line
    for line in lines[:-1]:
        if not line.strip():
            continue
        try:
            d = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(d, dict) and "name" in d and "version" in d:
            result.append(d)
    return result


class FileSink(Sink):
    """Writes events as JSON Lines into rotated files of one folder (see the module doc)."""

    Config = FileConfig

    def __init__(self, config: FileConfig, ctx: PluginContext) -> None:
        super().__init__(config, ctx)
        self.config: FileConfig = config
        self.folder: str = config.path
        self._log = ctx.log.bind(sink="file", path=self.folder)
        self._limit: int = max(1, int(config.rotate_mb * _MIB))
        #: ``format: debezium``: each line is a Debezium record's value (section 9)
        self._debezium = self.debezium_encoder()
        self._events: IO[bytes] | None = None
        self._index: int = 0
        self._name: str = ""
        self._size: int = 0  # logical size of the current file, buffered bytes included
        self._schemas: IO[bytes] | None = None
        self._schemas_dirty: bool = False
        self._seen: set[tuple[str, int]] = set()
        self._dir_dirty: bool = False

    # ------------------------------------------------------------------ errors

    def _io_error(self, what: str, path: str, e: OSError) -> RetriableError:
        return RetriableSinkError(
            f"file sink: cannot {what} {path}: {e.strerror or e}",
            pipeline=self.ctx.name,
            kind=Kind.SINK_IO,
        )

    def _fatal(self, what: str, path: str, e: OSError) -> FatalError:
        hint = ""
        if e.errno in (errno.EACCES, errno.EPERM):
            hint = " (give the service's user write permission on it, or change sink.path)"
        elif e.errno == errno.EROFS:
            hint = " (the file system is read-only; change sink.path)"
        return FatalError(
            f"file sink: cannot {what} {path}: {e.strerror or e}{hint}",
            pipeline=self.ctx.name,
        )

    def _check_folder(self) -> bool:
        """Raise FatalError if ``path`` exists but is not a folder; return whether it exists."""
        if os.path.isdir(self.folder):
            return True
        if os.path.lexists(self.folder):
            raise FatalError(
                f"file sink: path {self.folder} exists but is not a folder; "
                "point sink.path at a folder (it is created when missing)",
                pipeline=self.ctx.name,
            )
        return False

    # ------------------------------------------------------------------ cdc tail

    def follow(self, stop: threading.Event, from_end: bool = True) -> Iterator[bytes]:
        """``cdc tail``: :func:`follow_folder` on the sink's folder."""
        return follow_folder(self.folder, stop, from_end)

    # ------------------------------------------------------------------ cdc check

    def check(self) -> list[CDCError]:
        """The folder is a folder (or can be created) and this process may write in it."""
        try:
            exists = self._check_folder()
        except FatalError as exc:
            return [exc]
        target = self.folder
        if not exists:
            target = os.path.dirname(os.path.abspath(self.folder))
            while target and not os.path.isdir(target):
                parent = os.path.dirname(target)
                if parent == target:
                    break
                target = parent
        if not os.access(target, os.W_OK | os.X_OK):
            what = "write in" if exists else f"create {self.folder} under"
            return [FatalSinkError(
                f"file sink: this user cannot {what} {target}: give it write permission "
                f"(`chown` or `chmod u+w {target}`) or point sink.path elsewhere",
                pipeline=self.ctx.name,
                kind=Kind.SINK_CONFIG,
            )]
        return []

    # ------------------------------------------------------------------ open

    def open(self, resume: str | None) -> None:
        self.close()
        try:
            self._open(resume)
        except (FatalError, RetriableError):
            self.close()
            raise
        except OSError as e:
            self.close()
            path = e.filename if isinstance(e.filename, str) else self.folder
            if e.errno in _PERMANENT:
                raise self._fatal("open", path, e) from e
            raise self._io_error("open", path, e) from e

    def _open(self, resume: str | None) -> None:
        if not self._check_folder():
            parent = os.path.dirname(self.folder.rstrip(os.sep)) or os.sep
            try:
                os.makedirs(self.folder, exist_ok=True)
            except OSError as e:
                if e.errno in _PERMANENT or isinstance(e, FileExistsError):
                    self._check_folder()
                    raise self._fatal("create the folder", self.folder, e) from e
                raise self._io_error("create the folder", self.folder, e) from e
            _fsync_dir(parent)
            self._log.info("file_sink_created_its_folder", message="file sink created its folder")

        files = _events_files(self.folder)
        truncated = removed = 0
        if resume is not None:
            result = self._apply_resume(resume, files)
            if result is not None:
                truncated, removed = result
                files = _events_files(self.folder)
        if files:
            # A token's truncation leaves whole lines, so this only acts without a usable
            # token (or when the file was shorter than the token said).
            cut = _cut_torn_line(os.path.join(self.folder, files[-1][1]))
            if cut:
                self._log.warning("file_sink_cut_torn_line", message="file sink cut a torn last line", file=files[-1][1], bytes=cut)

        schemas_path = os.path.join(self.folder, SCHEMAS_FILE)
        if os.path.exists(schemas_path):
            schema_cut = _cut_torn_line(schemas_path)
            if schema_cut:
                self._log.warning(
                    "file_sink_cut_torn_line", message="file sink cut a torn last line", file=SCHEMAS_FILE, bytes=schema_cut
                )
        else:
            self._dir_dirty = True
        self._seen = {(d["name"], int(d["version"])) for d in _read_schemas(schemas_path)}
        self._schemas = open(schemas_path, "ab")

        if files:
            self._index, self._name = files[-1]
        else:
            self._index, self._name = 1, events_file_name(1)
            self._dir_dirty = True
        self._open_events()
        if self._dir_dirty:
            _fsync_dir(self.folder)
            self._dir_dirty = False
        self._log.info(
            "file_sink_open", message="file sink open",
            file=self._name,
            size=self._size,
            resume=resume,
            truncated_bytes=truncated,
            removed_files=removed,
            schemas=len(self._seen),
        )

    def _apply_resume(self, token: str, files: list[tuple[int, str]]) -> tuple[int, int] | None:
        """Truncate to the token and remove later files; None if the token cannot be used."""
        name, sep, size_text = token.rpartition(":")
        m = _EVENTS_RE.match(name)
        if not sep or not m or not size_text.isdigit():
            self._log.warning(
                "file_sink_resume_token", message="file sink resume token is not valid; only a torn last line will be cut",
                resume=token,
            )
            return None
        index, size = int(m.group(1)), int(size_text)
        path = os.path.join(self.folder, name)
        if not os.path.isfile(path):
            self._log.warning(
                "file_sink_resume_token_names", message="file sink resume token names a missing file; only a torn last line will be "
                "cut, events after the checkpoint may be written twice",
                resume=token,
            )
            return None
        actual = os.path.getsize(path)
        truncated = 0
        if actual < size:
            self._log.warning(
                "file_sink_events_file_is_shorter", message="file sink events file is shorter than its resume token says",
                resume=token,
                size=actual,
            )
        elif actual > size:
            with open(path, "r+b") as f:
                f.truncate(size)
                os.fsync(f.fileno())
            truncated = actual - size
        removed = 0
        for i, later in files:
            if i > index:
                os.remove(os.path.join(self.folder, later))
                removed += 1
        if removed:
            _fsync_dir(self.folder)
        return truncated, removed

    def _open_events(self) -> None:
        path = os.path.join(self.folder, self._name)
        self._events = open(path, "ab", buffering=_BUFFER)
        self._size = os.fstat(self._events.fileno()).st_size

    # ------------------------------------------------------------------ writing

    def write_schema(self, schema: SchemaVersion) -> None:
        key = (schema.name, schema.version)
        if key in self._seen:
            return
        fh = self._require(self._schemas)
        try:
            fh.write(orjson.dumps(schema.definition) + b"\n")
            fh.flush()  # to the OS now: rare, and keeps the file readable by held_schemas()
        except OSError as e:
            raise self._io_error("write", os.path.join(self.folder, SCHEMAS_FILE), e) from e
        self._seen.add(key)
        self._schemas_dirty = True

    def write(self, events: Sequence[ChangeEvent]) -> None:
        if not events:
            return
        fh = self._require(self._events)
        if self._debezium is not None:
            values = self._debezium.values(events)
            chunks = [b"\n".join(values) + b"\n"] if values else []
        else:
            chunks = encode_line_chunks(events)
        size = sum(map(len, chunks))
        try:
            if self._size + size <= self._limit:
                fh.writelines(chunks)
                self._size += size
            else:  # JSON lines hold no raw newline
                self._write_rotating([line for c in chunks for line in c.split(b"\n")[:-1]])
        except OSError as e:
            raise self._io_error("write", os.path.join(self.folder, self._name), e) from e

    def _write_rotating(self, lines: list[bytes]) -> None:
        """Write lines, starting a new file before any line that would pass the limit."""
        chunk: list[bytes] = []
        chunk_size = 0
        for line in lines:
            n = len(line) + 1
            if self._size + chunk_size + n > self._limit and self._size + chunk_size > 0:
                if chunk:
                    chunk.append(b"")
                    self._require(self._events).write(b"\n".join(chunk))
                    self._size += chunk_size
                    chunk, chunk_size = [], 0
                self._rotate()
            chunk.append(line)
            chunk_size += n
        if chunk:
            chunk.append(b"")
            self._require(self._events).write(b"\n".join(chunk))
            self._size += chunk_size

    def _rotate(self) -> None:
        """Close the current file (durably) and start the next one."""
        fh = self._require(self._events)
        fh.flush()
        os.fsync(fh.fileno())
        fh.close()
        self._events = None
        self._index += 1
        self._name = events_file_name(self._index)
        self._open_events()
        self._dir_dirty = True
        self._log.info("file_sink_started_a_new_events", message="file sink started a new events file", file=self._name)

    def flush(self) -> str | None:
        fh = self._require(self._events)
        path = os.path.join(self.folder, SCHEMAS_FILE)
        try:
            if self._schemas_dirty and self._schemas is not None:
                self._schemas.flush()
                os.fsync(self._schemas.fileno())
                self._schemas_dirty = False
            path = os.path.join(self.folder, self._name)
            fh.flush()
            os.fsync(fh.fileno())
            if self._dir_dirty:
                path = self.folder
                _fsync_dir(self.folder)
                self._dir_dirty = False
        except OSError as e:
            raise self._io_error("flush", path, e) from e
        return f"{self._name}:{self._size}"

    def _require(self, fh: IO[bytes] | None) -> IO[bytes]:
        if fh is None:
            raise RetriableSinkError(
                f"file sink for {self.folder} is not open", pipeline=self.ctx.name, kind=Kind.SINK_IO
            )
        return fh

    def close(self) -> None:
        for attr in ("_events", "_schemas"):
            fh: IO[bytes] | None = getattr(self, attr)
            setattr(self, attr, None)
            if fh is None:
                continue
            try:
                # a failed buffer flush still closes the descriptor (the buffered bytes, never
                # covered by a checkpoint, are dropped and delivered again)
                fh.close()
            except Exception as e:  # noqa: BLE001 - close must never raise
                try:
                    self._log.warning("file_sink_could_not_close", message="file sink could not close a file", error=str(e))
                except Exception:  # noqa: BLE001
                    pass

    # ------------------------------------------------------------------ facts

    def holds_events(self) -> bool:
        if not self._check_folder():
            return False
        for _, name in _events_files(self.folder):
            try:
                if os.path.getsize(os.path.join(self.folder, name)) > 0:
                    return True
            except FileNotFoundError:
                continue
        return False

    def held_schemas(self) -> list[dict[str, Any]]:
        if not self._check_folder():
            return []
        return _read_schemas(os.path.join(self.folder, SCHEMAS_FILE))

    # ------------------------------------------------------------------ drop

    def _drop_plan(self) -> tuple[list[str], str] | None:
        """The names to move and the target folder, or None when there is nothing."""
        if not self._check_folder():
            return None
        names = [name for _, name in _events_files(self.folder)]
        if os.path.exists(os.path.join(self.folder, SCHEMAS_FILE)):
            names.append(SCHEMAS_FILE)
        if not names:
            return None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = os.path.join(self.folder, f"dropped-{stamp}")
        n = 1
        while os.path.lexists(target):
            n += 1
            target = os.path.join(self.folder, f"dropped-{stamp}-{n}")
        return names, target

    def _summary(self, verb: str, names: list[str], target: str) -> str:
        events = [n for n in names if n != SCHEMAS_FILE]
        size = 0
        for n in events:
            try:
                size += os.path.getsize(os.path.join(target if verb == "moved" else self.folder, n))
            except OSError:
                pass
        parts = []
        if events:
            files = "file" if len(events) == 1 else "files"
            span = events[0] if len(events) == 1 else f"{events[0]} .. {events[-1]}"
            parts.append(f"{len(events)} event {files} ({span}, {size / _MIB:.1f} MiB)")
        if SCHEMAS_FILE in names:
            parts.append(SCHEMAS_FILE)
        return f"{verb} {' and '.join(parts)} from {self.folder} to {target}"

    def verify_view(self) -> EventFold:
        """The fold of the folder's events for ``cdc verify``, read incrementally (see
        :class:`FolderReader`)."""
        reader = FolderReader(self.folder)
        fold = EventFold(reader.read_new)
        reader.on_rewrite = fold.reset
        return fold

    def describe_drop(self) -> list[str]:
        plan = self._drop_plan()
        if plan is None:
            return []
        names, target = plan
        return [self._summary("move", names, target)]

    def drop(self) -> list[str]:
        plan = self._drop_plan()
        if plan is None:
            return []
        names, target = plan
        self.close()
        try:
            os.mkdir(target)
            for name in names:
                os.rename(os.path.join(self.folder, name), os.path.join(target, name))
            _fsync_dir(target)
            _fsync_dir(self.folder)
        except OSError as e:
            raise FatalError(
                f"file sink: cannot move files from {self.folder} to {target}: {e.strerror or e}",
                pipeline=self.ctx.name,
            ) from e
        line = self._summary("moved", names, target)
        self._log.info("file_sink_dropped_its_files", message="file sink dropped its files", target=target, files=len(names))
        return [line]


class FolderReader:
    """Reads a sink folder's events as they are appended, complete lines only (a line still
    being written is read next time). When the sink rewrote what was read (after a crash it
    cuts the events past the checkpoint and writes them again), ``on_rewrite`` is called and
    the folder is read again from its first file."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.on_rewrite: Any = None
        self._index = 0  # the file being read (0: none yet)
        self._offset = 0

    def _restart(self) -> None:
        self._index, self._offset = 0, 0
        if self.on_rewrite is not None:
            self.on_rewrite()

    def read_new(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        files = _events_files(self.folder)
        indexes = [i for i, _ in files]
        if self._index and self._index not in indexes:
            self._restart()
        for index, name in files:
            if index < self._index:
                continue
            if index > self._index:
                self._index, self._offset = index, 0
            path = os.path.join(self.folder, name)
            try:
                with open(path, "rb") as fh:
                    size = os.fstat(fh.fileno()).st_size
                    if size < self._offset:  # cut by the sink: read everything again
                        self._restart()
                        return self.read_new()
                    fh.seek(self._offset)
                    data = fh.read(size - self._offset)
            except FileNotFoundError:
                self._restart()
                return self.read_new()
            end = data.rfind(b"\n") + 1
            for line in data[:end].splitlines():
                if line:
                    out.append(orjson.loads(line))
            self._offset += end
        return out
