"""Security: secrets never leave the service, the admin API keeps its door shut, least
privilege is enough, and https is verified.

- one service run that uses every kind of secret at once (a PostgreSQL DSN password checked by
  scram-sha-256, a MariaDB DSN password, a webhook ``secret``, a webhook header value, a token in
  a webhook URL's query and a password in another's user information, an ``api.token``, a Kafka
  ``sasl.password``, and in a failing start a state-database DSN password), some written into
  the file, some from the environment; then every output is searched for each secret: the
  service's log, a failing start's error, `cdc validate`, `cdc status` (service and state store,
  text and JSON), `cdc schemas`, `cdc snapshot --wait`, `cdc drop` (dry run), every endpoint of
  the admin API (probes, /metrics, /pipelines, /pipelines/NAME, the snapshot endpoints, refusals),
  the state file's bytes and the sinks' files;
- the admin API answers 401 to every request without the right token but the probes, and
  `cdc run` refuses a non-loopback ``api.listen`` without a token;
- least privilege, end to end with an initial snapshot under a writer: PostgreSQL with a role
  that has REPLICATION and SELECT and a publication its owner made; MariaDB with REPLICATION
  SLAVE, REPLICATION CLIENT and SELECT on the database;
- webhook TLS: a self-signed receiver is refused without ``ca_file`` and accepted with it
  (tests/integration/test_webhook_sink.py checks the same on its own; here it is measured in the
  same run as the secrets).

Hostile pipeline files (fuzzed YAML and values) are covered by tests/unit/test_config_fuzz.py.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import yaml
from psycopg.conninfo import make_conninfo

from cdc_local.postgres import LocalPostgres
from cdc_local.postgres import free_port as pick_port
from tests.helpers import (
    CdcService,
    cdc_env,
    create_database,
    drop_database,
    execute,
    fold,
    log_records,
    read_complete_events,
    read_events,
    run_cli,
    table_rows,
    wait_for,
    write_config,
)

# ruff: noqa: F811 - the MariaDB fixtures above are used as test arguments
from tests.integration.test_mysql_source import my_pipeline, table_state
from tests.integration.test_pg_resilience import Writer, create_tables
from tests.kafka_harness import shared_broker
from tests.mariadb_fixtures import MyDB
from tests.webhook_harness import Receiver, self_signed_certificate


def _secret(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:16]}"


# -- a PostgreSQL role that must give its password ---------------------------------------------------


class PasswordDB:
    """A database on pg15 whose tables belong to a role that logs in with a password: the test
    server trusts every local connection, so a scram-sha-256 line for this role alone goes first
    in pg_hba.conf (taken out again afterwards)."""

    def __init__(self, server: LocalPostgres) -> None:
        self.server = server
        self.name, self.admin_dsn = create_database(server)
        self.role = f"sec_{uuid.uuid4().hex[:8]}"
        self.password = _secret("pgpw")
        self.hba = server.data_dir / "pg_hba.conf"
        self.original_hba = self.hba.read_text()

    def dsn(self, password: str) -> str:
        return f"postgresql://{self.role}:{password}@127.0.0.1:{self.server.port}/{self.name}"

    def refuses(self, password: str) -> bool:
        try:
            psycopg.connect(self.dsn(password), connect_timeout=5).close()
        except psycopg.OperationalError as exc:
            return "password authentication failed" in str(exc)
        return False


@pytest.fixture
def password_db(pg15: LocalPostgres) -> Iterator[PasswordDB]:
    db = PasswordDB(pg15)
    execute(pg15.dsn(), f"CREATE ROLE {db.role} LOGIN REPLICATION PASSWORD '{db.password}'")
    try:
        db.hba.write_text(f"host all {db.role} 127.0.0.1/32 scram-sha-256\n{db.original_hba}")
        execute(pg15.dsn(), "SELECT pg_reload_conf()")
        wait_for(lambda: db.refuses("not-the-password"), 10, what="pg_hba.conf reloaded")
        yield db
    finally:
        db.hba.write_text(db.original_hba)
        execute(pg15.dsn(), "SELECT pg_reload_conf()")
        drop_database(pg15, db.name)
        execute(pg15.dsn(), f"DROP ROLE IF EXISTS {db.role}")


def _my_user(db: MyDB, password: str) -> str:
    """A MariaDB user with only the grants cdc documents: REPLICATION SLAVE, REPLICATION CLIENT
    on *.*, SELECT on the database."""
    user = f"u{uuid.uuid4().hex[:10]}"
    db.server.execute(
        f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'",
        f"GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO '{user}'@'%'",
        f"GRANT SELECT ON `{db.name}`.* TO '{user}'@'%'",
    )
    return user


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


# -- (a) every secret at once, (b) the token, (d) TLS ----------------------------------------------------


def test_every_secret_kind_at_once_never_leaks(
    password_db: PasswordDB,
    mydb: MyDB,
    tmp_path: Path,
    free_port: int,
    ledger: Any,
) -> None:
    secrets = {
        "PostgreSQL DSN password": password_db.password,
        "PostgreSQL DSN password (wrong, failing pipeline)": _secret("pgbad"),
        "MariaDB DSN password": _secret("mypw"),
        "webhook secret": _secret("whsec"),
        "webhook header value": _secret("hookhdr"),
        "webhook URL query token": _secret("urltok"),
        "webhook URL user information": _secret("urlpw"),
        "api.token": _secret("apitok"),
        "Kafka sasl.password": _secret("saslpw"),
        "state.dsn password (failing start)": _secret("statepw"),
    }
    api_token = secrets["api.token"]
    env = cdc_env()
    env["CDC_T_PGPW"] = password_db.password
    env["CDC_T_API_TOKEN"] = api_token

    # -- the sources
    execute(
        password_db.admin_dsn,
        "CREATE TABLE items (id int PRIMARY KEY, name text)",
        "INSERT INTO items SELECT g, 'seed ' || g FROM generate_series(1, 50) g",
        f"ALTER TABLE items OWNER TO {password_db.role}",
        f'GRANT CREATE ON DATABASE "{password_db.name}" TO {password_db.role}',  # for its publications
    )
    mydb.execute("CREATE TABLE items (id INT PRIMARY KEY, v VARCHAR(40))")
    my_user = _my_user(mydb, secrets["MariaDB DSN password"])
    pg_dsn = password_db.dsn("${CDC_T_PGPW}")  # from the environment
    cert, key = self_signed_certificate(tmp_path)
    receiver = Receiver(secret=secrets["webhook secret"], tls=(cert, key))
    broker = shared_broker()
    pinned_url = f"{receiver.url}?token={secrets['webhook URL query token']}"
    unpinned_url = receiver.url.replace(
        "https://", f"https://cdc:{secrets['webhook URL user information']}@"
    )

    def pg_source(slot: str, dsn: str = pg_dsn) -> dict[str, Any]:
        return {
            "type": "postgres",
            "dsn": dsn,
            "tables": ["public.items"],
            "heartbeat_s": 1,
            "slot": slot,
        }

    pipelines = [
        {
            "name": "hook",
            "source": pg_source("cdc_hook"),
            "snapshot": {"mode": "initial"},
            "sink": {
                "type": "webhook",
                "url": pinned_url,
                "secret": secrets["webhook secret"],
                "headers": {"Authorization": f"Bearer {secrets['webhook header value']}"},
                "ca_file": str(cert),
                "max_backoff_s": 0.5,
            },
        },
        {
            "name": "unpinned",
            "source": pg_source("cdc_unpinned"),
            "snapshot": {"mode": "never"},
            "sink": {
                "type": "webhook",
                "url": unpinned_url,
                "secret": secrets["webhook secret"],
                "max_backoff_s": 0.5,
            },
        },
        {
            "name": "kafka",
            "source": pg_source("cdc_kafka"),
            "snapshot": {"mode": "never"},
            "sink": {
                "type": "kafka",
                "bootstrap_servers": broker.bootstrap,
                "topic": f"sec{uuid.uuid4().hex[:6]}.{{table}}",
                "config": {
                    "security.protocol": "SASL_PLAINTEXT",
                    "sasl.mechanism": "PLAIN",
                    "sasl.username": "cdc",
                    "sasl.password": secrets["Kafka sasl.password"],
                    "socket.timeout.ms": 2000,
                },
            },
        },
        {
            "name": "badpw",
            "source": pg_source(
                "cdc_badpw",
                password_db.dsn(secrets["PostgreSQL DSN password (wrong, failing pipeline)"]),
            ),
            "snapshot": {"mode": "never"},
            "sink": {"type": "file", "path": str(tmp_path / "out-badpw")},
        },
        my_pipeline(
            "my",
            mydb.dsn(my_user, secrets["MariaDB DSN password"]),
            [mydb.table("items")],
            tmp_path / "out-my",
        ),
    ]
    names = [p["name"] for p in pipelines]
    cfg = write_config(
        tmp_path, pipelines, api_port=free_port, extra={"api": {"token": "${CDC_T_API_TOKEN}"}}
    )
    outputs: dict[str, str] = {}

    def cli(label: str, *args: str, config: Path = cfg) -> Any:
        proc = run_cli(*args[:1], str(config), *args[1:], env=env, timeout=120)
        outputs[f"`cdc {label}`"] = proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
        return proc

    try:
        assert password_db.refuses(secrets["PostgreSQL DSN password (wrong, failing pipeline)"])
        assert cli("validate", "validate").returncode == 0

        # a failing start: the state database refuses the password
        bad_state = tmp_path / "bad-state"
        bad_state.mkdir()
        bad_cfg = write_config(
            bad_state,
            pipelines,
            api_port=pick_port(),
            extra={"api": {"token": "${CDC_T_API_TOKEN}"}},
        )
        doc = yaml.safe_load(bad_cfg.read_text())
        doc["state"] = {"dsn": password_db.dsn(secrets["state.dsn password (failing start)"])}
        bad_cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
        proc = cli("run (state.dsn refused)", "run", config=bad_cfg)
        assert proc.returncode == 1, proc.stderr[-3000:]
        assert any(r.get("event") == "cannot_start" for r in log_records(proc.stderr)), proc.stderr[
            -3000:
        ]
        cli("status (state.dsn refused)", "status", config=bad_cfg)

        with CdcService(cfg, env=env) as svc:
            svc.token = api_token
            svc.wait_state("hook", "running", timeout=60)
            svc.wait_state("my", "running", timeout=60)
            svc.wait_state("unpinned", "running", timeout=60)  # nothing to send yet
            kafka = svc.wait_state("kafka", "retrying", timeout=60)
            bad = svc.wait_state("badpw", "failed", timeout=60)
            execute(
                password_db.admin_dsn,
                "INSERT INTO items SELECT g, 'new ' || g FROM generate_series(51, 60) g",
            )
            mydb.execute(
                "INSERT INTO items VALUES (1, 'a'), (2, 'b')",
                "UPDATE items SET v = 'c' WHERE id = 2",
            )
            unpinned = svc.wait_state("unpinned", "retrying", timeout=60)
            wait_for(
                lambda: (
                    {e["after"]["id"] for e in receiver.events() if e["after"]} >= set(range(1, 61))
                ),
                60,
                what="the webhook's rows",
            )
            wait_for(
                lambda: len(read_complete_events(tmp_path / "out-my")) == 3,
                60,
                what="MariaDB's events",
            )

            # (b) the token: every endpoint but the probes refuses a request without it
            refusals = 0
            unauthenticated = [
                ("GET", "/pipelines", None),
                ("GET", "/pipelines/hook", None),
                ("GET", "/metrics", None),
                ("GET", "/pipelines/hook/snapshots", None),
                ("POST", "/pipelines/hook/snapshots", {"tables": ["public.items"]}),
                ("DELETE", "/pipelines/hook/snapshots/x", None),
            ]
            for method, path, body in unauthenticated:
                for token in ("", "wrong", api_token[:-1]):
                    status, doc = svc.get(path, token=token, method=method, body=body)
                    outputs[f"{method} {path} (token {token!r})"] = orjson.dumps(doc).decode()
                    refusals += status == 401
                    assert status == 401, (method, path, token, status, doc)
            for path in ("/livez", "/healthz"):
                status, doc = svc.get(path, token="")
                outputs[f"GET {path} (no token)"] = orjson.dumps(doc).decode()
                assert status in (200, 503), (path, status, doc)

            # every endpoint with the token
            status, created = svc.get(
                "/pipelines/hook/snapshots", method="POST", body={"tables": ["public.items"]}
            )
            assert status in (200, 202), created
            outputs["POST /pipelines/hook/snapshots"] = orjson.dumps(created).decode()
            sid = created["id"]
            wait_for(
                lambda: svc.get(f"/pipelines/hook/snapshots/{sid}")[1]["state"] == "done",
                60,
                what="the snapshot done",
            )
            paths = [
                "/livez",
                "/healthz",
                "/metrics",
                "/pipelines",
                "/pipelines/hook/snapshots",
                f"/pipelines/hook/snapshots/{sid}",
                "/pipelines/nope",
                "/nothing",
            ]
            for path in paths + [f"/pipelines/{n}" for n in names]:
                status, doc = svc.get(path)
                outputs[f"GET {path}"] = doc if isinstance(doc, str) else orjson.dumps(doc).decode()
            status, doc = svc.get(
                "/pipelines/hook/snapshots", method="POST", body={"tables": ["public.nope"]}
            )
            outputs["POST /pipelines/hook/snapshots (a table not in the pipeline)"] = orjson.dumps(
                doc
            ).decode()
            assert status == 400, doc

            # the commands while the service runs
            cli("status", "status")
            cli("status --json", "status", "--json")
            cli("schemas", "schemas")
            assert (
                cli("snapshot --wait", "snapshot", "hook", "public.items", "--wait").returncode == 0
            )
            cli("drop hook (service running)", "drop", "hook")  # refused: the slot is in use
            assert svc.stop() == 0, svc.logs()[-3000:]
            outputs["the service's log (stderr)"] = svc.logs()

        # after the stop: from the state store, and the files themselves
        cli("status (state store)", "status")
        cli("status --json (state store)", "status", "--json")
        for n in names:
            cli(f"drop {n}", "drop", n)  # without --yes: only says what it would drop
        for f in sorted(tmp_path.rglob("*")):
            if (
                f.is_file()
                and f.suffix not in (".pem", ".key", ".yaml")
                and not f.name.startswith("cdc-")
            ):
                outputs[f"file {f.relative_to(tmp_path)}"] = f.read_bytes().decode("latin-1")
        assert (tmp_path / "state.sqlite").exists() and any(
            k.startswith("file state.sqlite") for k in outputs
        )
    finally:
        receiver.close()
        mydb.server.execute(f"DROP USER IF EXISTS '{my_user}'@'%'")

    # the pipelines did use the secrets
    assert bad["last_error"]["kind"] in (
        "source_auth",
        "source_permission",
        "source_unreachable",
    ), bad["last_error"]
    assert kafka["last_error"]["kind"] == "sink_unavailable", kafka["last_error"]
    delivered = receiver.snapshot()
    assert delivered and all(r.signature_ok for r in delivered), (
        "every request signed with the secret"
    )
    assert all(
        r.headers.get("authorization") == f"Bearer {secrets['webhook header value']}"
        for r in delivered
    )
    assert {r.doc["pipeline"] for r in delivered if r.doc} == {"hook"}, (
        "only the pinned pipeline reached the receiver"
    )

    # each output searched is the real thing (so finding nothing means something)
    assert "from the running service" in outputs["`cdc status`"]
    assert "state store" in outputs["`cdc status (state store)`"]
    assert '"from": "state"' in outputs["`cdc status --json (state store)`"]
    assert "cdc_pipeline_state" in outputs["GET /metrics"]
    assert (
        "source_auth" in outputs["GET /pipelines/badpw"]
        and "***" in outputs["GET /pipelines/badpw"]
    )
    assert "cannot_start" in outputs["`cdc run (state.dsn refused)`"]
    assert "CERTIFICATE_VERIFY_FAILED" in outputs["GET /pipelines/unpinned"]
    assert outputs["file state.sqlite"].startswith("SQLite format 3")
    assert "would" in outputs["`cdc drop hook`"]
    leaks = [
        (kind, where)
        for where, text in outputs.items()
        for kind, value in secrets.items()
        if value in text
    ]
    ledger.record(
        "Security: every kind of secret in one run, searched in every output",
        injected=len(secrets),
        lost=len(leaks),
        note=f"lost = secrets found; {len(secrets)} secrets (DSN passwords of PostgreSQL with scram-sha-256, "
        "of MariaDB and of a refused state.dsn, webhook secret, header value, URL query token and "
        "user information, api.token, Kafka sasl.password) searched in "
        f"{len(outputs)} outputs: the log, a failing start, validate, status (service and state "
        "store, text and JSON), schemas, snapshot --wait, drop, every API endpoint with and without "
        "the token, the state file's bytes, the sinks' files",
    )
    assert not leaks, f"secrets leaked: {leaks}"

    ledger.record(
        "Security: admin API requests without the token",
        injected=len(unauthenticated) * 3,
        lost=len(unauthenticated) * 3 - refusals,
        note="lost = requests not answered 401; GET /pipelines, /pipelines/NAME, /metrics, the "
        "snapshot list, POST a snapshot and DELETE one, each with no token, a wrong one and the "
        "token minus its last character: all 401; /livez and /healthz open",
    )
    assert unpinned["last_error"]["kind"] == "sink_unavailable", unpinned["last_error"]
    assert "CERTIFICATE_VERIFY_FAILED" in unpinned["last_error"]["message"], unpinned["last_error"]
    ledger.record(
        "Security: webhook receiver with a self-signed certificate",
        injected=1,
        lost=0,
        note="without ca_file: `retrying` (sink_unavailable, CERTIFICATE_VERIFY_FAILED), nothing "
        "sent; with ca_file pinning it: every row delivered, every request signed",
    )


def test_non_loopback_api_without_a_token_is_refused(tmp_path: Path, ledger: Any) -> None:
    port = pick_port()
    p = {
        "name": "p",
        "source": {
            "type": "postgres",
            "dsn": "postgresql://cdc@127.0.0.1:1/shop",
            "tables": ["public.t"],
        },
        "sink": {"type": "file", "path": str(tmp_path / "out")},
    }
    cfg = write_config(tmp_path, [p], api_port=port, extra={"api": {"listen": f"0.0.0.0:{port}"}})
    started = time.monotonic()
    proc = run_cli("run", str(cfg), timeout=30)
    took = time.monotonic() - started
    message = "api.listen: listening on a non-loopback address needs api.token"
    ledger.record(
        "Security: admin API on a non-loopback address without a token",
        injected=1,
        lost=0 if proc.returncode != 0 else 1,
        note=f"`cdc run` exits {proc.returncode} in {took:.1f} s with `{message}` (an invalid file, as "
        "`cdc validate` says), before listening anywhere",
    )
    # the contract's exit code for an invalid file (docs/operations.md's Docker table says 1)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not _port_open(port)
    assert not (tmp_path / "state.sqlite").exists()
    # with a token it is a valid file
    cfg = write_config(
        tmp_path, [p], api_port=port, extra={"api": {"listen": f"0.0.0.0:{port}", "token": "t0ken"}}
    )
    assert run_cli("validate", str(cfg)).returncode == 0


# -- (c) least privilege ---------------------------------------------------------------------------------

ROWS = 5_000


@pytest.fixture
def least_pg(pg15: LocalPostgres) -> Iterator[tuple[str, str]]:
    """A database whose ``items`` belongs to postgres, with a publication its owner made, and a
    role with only LOGIN REPLICATION and SELECT on it: (owner's DSN, the role's DSN)."""
    name, dsn = create_database(pg15)
    role = f"lp_{uuid.uuid4().hex[:8]}"
    try:
        create_tables(dsn, "public.items")
        execute(
            dsn,
            f"INSERT INTO items SELECT g, 'seed ' || g, g % 2 = 0, g FROM generate_series(1, {ROWS}) g",
            f"CREATE ROLE {role} LOGIN REPLICATION",
            f"GRANT SELECT ON items TO {role}",
            "CREATE PUBLICATION cdc_lp FOR TABLE items WITH (publish_via_partition_root = true)",
        )
        yield dsn, make_conninfo(dsn, user=role)
    finally:
        drop_database(pg15, name)
        execute(pg15.dsn(), f"DROP ROLE IF EXISTS {role}")


def _least_privilege_run(
    cfg: Path, name: str, out: Path, writer: Any, diff: Any, ledger: Any, fault: str, grants: str
) -> None:
    with CdcService(cfg) as svc:
        svc.wait_state(name, "running", timeout=60)
        writer.start()
        sid = wait_for(
            lambda: (svc.pipeline(name).get("snapshot") or {}).get("id"),
            30,
            what="the initial snapshot",
        )
        wait_for(
            lambda: svc.get(f"/pipelines/{name}/snapshots/{sid}")[1]["state"] in ("done", "failed"),
            120,
            what="the snapshot's end",
        )
        snapshot = svc.get(f"/pipelines/{name}/snapshots/{sid}")[1]
        more = writer.transactions + 30
        wait_for(lambda: writer.transactions > more, 30, what="writes after the snapshot")
        writer.stop()
        lost = -1
        if snapshot["state"] == "done":
            lost = 0
            try:
                wait_for(lambda: diff() == 0, 60, interval=0.3, what="the sink to match the table")
            except AssertionError:
                lost = diff()
        state = svc.pipeline(name)
        assert svc.stop() == 0, svc.logs()[-3000:]
    reads = sum(1 for e in read_events(out) if e["op"] == "r")
    ledger.record(
        fault,
        injected=ROWS,
        lost=lost,
        recover_s=None,
        note=f"{grants}: snapshot.mode initial of {ROWS:,} rows ({reads:,} read) under a writer "
        f"({writer.transactions:,} transactions), then streaming; "
        + (
            "fold == table"
            if lost == 0
            else f"snapshot {snapshot['state']}: {snapshot.get('error')}; state {state['state']} {state.get('last_error')}"
        ),
    )
    assert snapshot["state"] == "done", snapshot
    assert state["state"] == "running", state
    assert lost == 0, f"{lost} rows differ"


def test_least_privilege_postgres(
    least_pg: tuple[str, str], tmp_path: Path, free_port: int, ledger: Any
) -> None:
    owner_dsn, role_dsn = least_pg
    out = tmp_path / "out"
    p = {
        "name": "lp",
        "source": {
            "type": "postgres",
            "dsn": role_dsn,
            "tables": ["public.items"],
            "heartbeat_s": 1,
        },
        "snapshot": {"mode": "initial", "chunk_rows": 500},
        "sink": {"type": "file", "path": str(out)},
    }
    cfg = write_config(tmp_path, [p], api_port=free_port)
    writer = Writer(owner_dsn, ["public.items"], seed=3, pause=0.01)
    try:
        _least_privilege_run(
            cfg,
            "lp",
            out,
            writer,
            lambda: _diff(
                fold(read_complete_events(out), "public.items"),
                table_rows(owner_dsn, "public.items", ["id"]),
            ),
            ledger,
            "Least privilege: PostgreSQL 15 role with REPLICATION + SELECT, publication by the owner",
            "LOGIN REPLICATION, SELECT on the table, no ownership, publication made beforehand by the table's owner",
        )
    finally:
        writer.halt.set()


def _diff(got: dict[bytes, Any], want: dict[bytes, Any]) -> int:
    return sum(1 for k, v in want.items() if got.get(k) != v) + sum(1 for k in got if k not in want)


class _MyWriter(threading.Thread):
    """Paced small transactions on MariaDB's ``items`` (insert, update, delete) until stopped."""

    def __init__(self, db: MyDB, first_new_id: int) -> None:
        super().__init__(name="mariadb-writer", daemon=True)
        self.db = db
        self.next_id = first_new_id
        self.halt = threading.Event()
        self.transactions = 0
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            conn = self.db.connect(autocommit=False)
            try:
                with conn.cursor() as cur:
                    while not self.halt.is_set():
                        i = self.next_id
                        cur.execute("INSERT INTO items VALUES (%s, %s, 0)", (i, f"new {i}"))
                        cur.execute(
                            "UPDATE items SET v = CONCAT(v, '+'), n = n + 1 WHERE id = %s",
                            ((i * 7919) % ROWS + 1,),
                        )
                        if i % 3 == 0:
                            cur.execute(
                                "DELETE FROM items WHERE id = %s", ((i * 104729) % ROWS + 1,)
                            )
                        conn.commit()
                        self.next_id += 1
                        self.transactions += 1
                        self.halt.wait(0.01)  # the injected write rate
            finally:
                conn.close()
        except BaseException as exc:
            self.failure = exc

    def stop(self) -> None:
        self.halt.set()
        self.join(30)
        assert not self.is_alive() and self.failure is None, self.failure


def test_least_privilege_mariadb(mydb: MyDB, tmp_path: Path, free_port: int, ledger: Any) -> None:
    mydb.execute(
        "CREATE TABLE items (id INT PRIMARY KEY, v VARCHAR(60), n INT)",
        f"INSERT INTO items SELECT seq, CONCAT('seed ', seq), 0 FROM seq_1_to_{ROWS}",
    )
    password = _secret("lp")
    user = _my_user(mydb, password)
    table = mydb.table("items")
    out = tmp_path / "out"
    p = my_pipeline(
        "lp",
        mydb.dsn(user, password),
        [table],
        out,
        snapshot={"mode": "initial", "chunk_rows": 500},
    )
    cfg = write_config(tmp_path, [p], api_port=free_port)
    writer = _MyWriter(mydb, ROWS + 1)
    try:
        _least_privilege_run(
            cfg,
            "lp",
            out,
            writer,
            lambda: _diff(
                fold(read_complete_events(out), table), table_state(mydb, table, ["id"], "id, v, n")
            ),
            ledger,
            "Least privilege: MariaDB user with REPLICATION SLAVE, REPLICATION CLIENT + SELECT",
            "REPLICATION SLAVE and REPLICATION CLIENT on *.*, SELECT on the database only",
        )
    finally:
        writer.halt.set()
        mydb.server.execute(f"DROP USER IF EXISTS '{user}'@'%'")
