"""What the PostgreSQL -> file pipeline delivers (CONTRACT.md sections 2, 4 and 6 "file").

Every test runs the real ``cdc run`` against a fresh database on PostgreSQL 15 and 18 (the
``pgdb`` fixture), makes changes with plain SQL once the pipeline is ``running`` (its slot
exists from then on), waits for the file sink to hold them (deadlines, never fixed sleeps)
and checks the events byte-exact where the contract says so.
"""

from __future__ import annotations

import json
import random
import string
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from psycopg import sql

from cdc_local.postgres import LocalPostgres
from tests.helpers import (
    CdcService,
    fold,
    pg_pipeline,
    read_events,
    read_schemas,
    run_cli,
    table_rows,
    wait_for,
    write_config,
)

# -- helpers ------------------------------------------------------------------------------------


def lsn_int(text: str) -> int:
    hi, _, lo = text.partition("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def sql_exec(dsn: str, *statements: str | tuple[str, Any]) -> None:
    """Run statements one by one in autocommit mode (each its own transaction)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for st in statements:
            if isinstance(st, tuple):
                conn.execute(st[0], st[1])
            else:
                conn.execute(st)


def check_schemas_cover(out: Path) -> list[dict[str, Any]]:
    """Read the events, then schemas.jsonl: every version an event uses must already be
    there (a schema is written before the first event that uses it). Returns the events."""
    events = read_events(out)
    have = {(s["name"], s["version"]) for s in read_schemas(out)}
    for e in events:
        ref = (e["schema"]["name"], e["schema"]["version"])
        assert ref in have, f"event {e['id']} uses {ref}, not in schemas.jsonl {sorted(have)}"
    return events


def wait_events(
    out: Path, n: int, svc: CdcService | None = None, timeout: float = 30
) -> list[dict[str, Any]]:
    """Wait until the sink holds at least ``n`` events (checking schema coverage each time)."""

    def enough() -> list[dict[str, Any]] | None:
        if svc is not None and svc.proc.poll() is not None:
            raise AssertionError(f"cdc exited with {svc.proc.returncode}:\n{svc.logs()[-4000:]}")
        events = check_schemas_cover(out)
        return events if len(events) >= n else None

    try:
        return wait_for(enough, timeout, what=f"{n} events in {out}")  # type: ignore[no-any-return]
    except AssertionError as exc:
        have = len(read_events(out)) if out.exists() else 0
        logs = svc.logs()[-4000:] if svc is not None else ""
        raise AssertionError(f"{exc}; have {have}\n--- cdc log ---\n{logs}") from None


@contextmanager
def service(
    tmp_path: Path, port: int, pipelines: list[dict[str, Any]], running: list[str] | None = None
) -> Iterator[CdcService]:
    """Start `cdc run` on these pipelines, wait until they run; stop it (exit 0) at the end."""
    config = write_config(tmp_path, pipelines, api_port=port)
    with CdcService(config) as svc:
        for name in running if running is not None else [p["name"] for p in pipelines]:
            svc.wait_state(name, "running")
        yield svc
        code = svc.stop()
        assert code == 0, svc.logs()[-4000:]


def table_events(events: list[dict[str, Any]], table: str) -> list[dict[str, Any]]:
    return [e for e in events if e["schema"]["name"] == table]


def schema_defs(out: Path, table: str) -> dict[int, dict[str, Any]]:
    defs: dict[int, dict[str, Any]] = {}
    for d in read_schemas(out):
        if d["name"] == table:
            defs.setdefault(d["version"], d)
    return defs


def col_types(definition: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["type"] for c in definition["columns"]}


def dbname(dsn: str) -> str:
    return dsn.rsplit("/", 1)[1].split("?", 1)[0]


@pytest.fixture
def pgdb2(pg: LocalPostgres) -> Iterator[str]:
    """A second fresh database on the same server as ``pgdb``."""
    from tests.conftest import _drop_database

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg.dsn(), autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield pg.dsn(name)
    finally:
        _drop_database(pg, name)


# -- 1. values ----------------------------------------------------------------------------------

TYPES_DDL = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE SCHEMA app;
CREATE DOMAIN app.posint AS int4 CHECK (VALUE > 0);
CREATE TABLE public.types (
    id int4 PRIMARY KEY,
    i2 int2, i4 int4, i8 int8, i8_min int8,
    n numeric(12,2), n_big numeric, n_nan numeric,
    f4 float4, f4_nan float4, f8 float8, f8_nan float8, f8_inf float8, f8_ninf float8,
    f8a float8[],
    b_t bool, b_f bool,
    t text, vc varchar(50), ch char(3),
    by bytea, by_empty bytea,
    d date, d_inf date, d_bc date,
    tm time, tm_frac time, tmtz timetz,
    ts timestamp, ts_inf timestamp, ts_bc timestamp,
    tstz timestamptz, tstz3 timestamptz(3), tstz_ninf timestamptz, ts3 timestamp(3), tm3 time(3),
    iv interval, iv_neg interval,
    u uuid,
    j json, jb jsonb,
    ia int4[], ia2 int4[], ta text[], ma mood[],
    m mood, dom app.posint,
    ip inet, net cidr, mac macaddr, rng int4range,
    nul_t text, nul_i int4, nul_j jsonb, nul_a int4[]
)
"""

TEXT_VALUE = 'héllo "wörld" \\ tab\t nl\n 😀'
TEXT_ARRAY = ["plain", "a b", 'c"d', "e,f", "back\\slash", "NULL", None, "", "{x}"]
JSON_TEXT = '{"a": 1,\n "big": 12345678901234567890.123, "s": "x\\ny"}'

INSERT_TYPES = """
INSERT INTO public.types VALUES (
    1,
    -32768, 2147483647, 9223372036854775807, -9223372036854775808,
    19.9, 12345678901234567890.123456789, 'NaN',
    1.5, 'NaN', 3.141592653589793, 'NaN', 'Infinity', '-Infinity',
    '{1.5,NaN,Infinity,-Infinity}',
    true, false,
    %(t)s, 'hello varchar', 'ab',
    '\\x00ff10'::bytea, ''::bytea,
    '2026-11-28', 'infinity', '0044-03-15 BC',
    '13:45:01', '13:45:01.5', '13:45:01.123456+02',
    '2026-11-28 13:45:01.5', 'infinity', '0044-03-15 12:00:00 BC',
    '2026-11-28 13:45:01.123456+01', '2026-11-28 13:45:01.123456+01', '-infinity',
    '2026-11-28 13:45:01.123456', '13:45:01.123456',
    '1 day 2 hours 3 minutes 4.5 seconds', '-1 year -2 months +3 days -4 hours',
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
    %(j)s, '{"b": [1, 2.50, {"c": null}], "a": "x", "n": 12345678901234567890.123}',
    '{1,NULL,3}', '{{1,2},{3,4}}', %(ta)s, '{sad,happy}',
    'happy', 42,
    '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03', '[1,5)',
    NULL, NULL, NULL, NULL
)
"""

EXPECTED_AFTER: dict[str, Any] = {
    "id": 1,
    "i2": -32768,
    "i4": 2147483647,
    "i8": 9223372036854775807,
    "i8_min": -9223372036854775808,
    "n": "19.90",
    "n_big": "12345678901234567890.123456789",
    "n_nan": "NaN",
    "f4": 1.5,
    "f4_nan": "NaN",
    "f8": 3.141592653589793,
    "f8_nan": "NaN",
    "f8_inf": "Infinity",
    "f8_ninf": "-Infinity",
    "f8a": [1.5, "NaN", "Infinity", "-Infinity"],
    "b_t": True,
    "b_f": False,
    "t": TEXT_VALUE,
    "vc": "hello varchar",
    "ch": "ab ",
    "by": "AP8Q",
    "by_empty": "",
    "d": "2026-11-28",
    "d_inf": "infinity",
    "d_bc": "0044-03-15 BC",
    "tm": "13:45:01.000000",
    "tm_frac": "13:45:01.500000",
    "tmtz": "13:45:01.123456+02:00",
    "ts": "2026-11-28T13:45:01.500000",
    "ts_inf": "infinity",
    "ts_bc": "0044-03-15 12:00:00 BC",
    "tstz": "2026-11-28T12:45:01.123456Z",
    "tstz3": "2026-11-28T12:45:01.123000Z",
    "tstz_ninf": "-infinity",
    "ts3": "2026-11-28T13:45:01.123000",
    "tm3": "13:45:01.123000",
    "iv": "P1DT2H3M4.5S",
    "iv_neg": "P-1Y-2M3DT-4H",
    "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    # j and jb are checked with exact (Decimal) parsing below
    "ia": [1, None, 3],
    "ia2": [[1, 2], [3, 4]],
    "ta": TEXT_ARRAY,
    "ma": ["sad", "happy"],
    "m": "happy",
    "dom": 42,
    "ip": "192.168.0.1/24",
    "net": "10.0.0.0/8",
    "mac": "08:00:2b:01:02:03",
    "rng": "[1,5)",
    "nul_t": None,
    "nul_i": None,
    "nul_j": None,
    "nul_a": None,
}

EXPECTED_TYPES = {
    "id": "int4", "i2": "int2", "i4": "int4", "i8": "int8", "i8_min": "int8",
    "n": "numeric(12,2)", "n_big": "numeric", "n_nan": "numeric",
    "f4": "float4", "f4_nan": "float4", "f8": "float8", "f8_nan": "float8",
    "f8_inf": "float8", "f8_ninf": "float8", "f8a": "float8[]",
    "b_t": "bool", "b_f": "bool",
    "t": "text", "vc": "varchar(50)", "ch": "bpchar(3)",
    "by": "bytea", "by_empty": "bytea",
    "d": "date", "d_inf": "date", "d_bc": "date",
    "tm": "time", "tm_frac": "time", "tmtz": "timetz",
    "ts": "timestamp", "ts_inf": "timestamp", "ts_bc": "timestamp",
    "tstz": "timestamptz", "tstz3": "timestamptz(3)", "tstz_ninf": "timestamptz",
    "ts3": "timestamp(3)", "tm3": "time(3)",
    "iv": "interval", "iv_neg": "interval",
    "u": "uuid", "j": "json", "jb": "jsonb",
    "ia": "int4[]", "ia2": "int4[]", "ta": "text[]", "ma": "public.mood[]",
    "m": "public.mood", "dom": "app.posint",
    "ip": "inet", "net": "cidr", "mac": "macaddr", "rng": "int4range",
    "nul_t": "text", "nul_i": "int4", "nul_j": "jsonb", "nul_a": "int4[]",
}  # fmt: skip


def test_every_type_maps_exactly_as_the_values_table(
    pgdb: str, tmp_path: Path, free_port: int
) -> None:
    sql_exec(pgdb, TYPES_DDL)
    out = tmp_path / "out"
    with service(tmp_path, free_port, [pg_pipeline("types", pgdb, ["public.types"], out)]) as svc:
        sql_exec(pgdb, (INSERT_TYPES, {"t": TEXT_VALUE, "j": JSON_TEXT, "ta": TEXT_ARRAY}))
        wait_events(out, 1, svc)

    lines = [
        ln for f in sorted(out.glob("events-*.jsonl")) for ln in f.read_bytes().split(b"\n") if ln
    ]
    assert len(lines) == 1, "the json value's newline must not split the JSON line"
    raw = lines[0]
    event = orjson.loads(raw)
    assert event["op"] == "c"
    assert event["key"] == {"id": 1}
    assert event["before"] is None
    assert "unchanged" not in event and "key_change" not in event
    after = event["after"]
    assert list(after) == list(EXPECTED_TYPES), "every column, in table order"
    for name, expected in EXPECTED_AFTER.items():
        assert after[name] == expected, f"{name}: {after[name]!r} != {expected!r}"
        assert type(after[name]) is type(expected), (
            f"{name}: {type(after[name])} is not {type(expected)}"
        )

    # json/jsonb are JSON values whose numbers keep every digit
    exact = json.loads(raw, parse_float=Decimal)["after"]
    assert exact["j"] == {"a": 1, "big": Decimal("12345678901234567890.123"), "s": "x\ny"}
    assert exact["jb"] == {
        "a": "x",
        "b": [1, Decimal("2.50"), {"c": None}],
        "n": Decimal("12345678901234567890.123"),
    }
    assert b"12345678901234567890.123" in raw
    assert b"9223372036854775807" in raw and b"-9223372036854775808" in raw

    # the schema definition: pg_type names with modifiers, non-pg_catalog types qualified
    defs = schema_defs(out, "public.types")
    assert list(defs) == [1]
    d = defs[1]
    assert d["key"] == ["id"]
    assert col_types(d) == EXPECTED_TYPES
    assert [c["name"] for c in d["columns"]] == list(EXPECTED_TYPES)
    nullable = {c["name"]: c["nullable"] for c in d["columns"]}
    assert nullable["id"] is False and nullable["t"] is True
    assert event["schema"] == {"name": "public.types", "version": 1}


# -- 2. transactions ------------------------------------------------------------------------------


def _now_ms(cur: psycopg.Connection[Any]) -> int:
    row = cur.execute(
        "SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint"
    ).fetchone()
    assert row is not None
    return int(row[0])


def _xid(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT pg_current_xact_id()::xid::text").fetchone()
    assert row is not None
    return str(row[0])


def test_transactions_arrive_in_commit_order_contiguous_with_ids_and_positions(
    pgdb: str, tmp_path: Path, free_port: int
) -> None:
    sql_exec(
        pgdb,
        "CREATE TABLE public.a (id int PRIMARY KEY, v text)",
        "CREATE TABLE public.b (id int PRIMARY KEY, w int)",
    )
    out = tmp_path / "out"
    pipelines = [pg_pipeline("tx", pgdb, ["public.a", "public.b"], out)]
    # (xid, commit window lo, hi) per transaction in commit order
    txs: list[tuple[str, int, int]] = []
    with service(tmp_path, free_port, pipelines) as svc:
        with psycopg.connect(pgdb) as c1, psycopg.connect(pgdb) as c2:
            # T1 starts first (lower xid) but commits after T2
            c1.execute("INSERT INTO a VALUES (1, 'one')")
            x1 = _xid(c1)
            c2.execute("INSERT INTO b VALUES (1, 10)")
            c2.execute("INSERT INTO a VALUES (2, 'two')")
            c2.execute("UPDATE b SET w = 11 WHERE id = 1")
            x2 = _xid(c2)
            lo = _now_ms(c2)
            c2.commit()
            txs.append((x2, lo, _now_ms(c2)))
            c2.commit()
            c1.execute("INSERT INTO b VALUES (2, 20)")
            c1.execute("INSERT INTO a VALUES (10, 'x'), (11, 'y')")  # one statement, two rows
            lo = _now_ms(c1)
            c1.commit()
            txs.append((x1, lo, _now_ms(c1)))
            c1.commit()
            c2.execute("UPDATE a SET v = 'uno' WHERE id = 1")
            c2.execute("DELETE FROM b WHERE id = 1")
            c2.execute("DELETE FROM a WHERE id = 10")
            x3 = _xid(c2)
            lo = _now_ms(c2)
            c2.commit()
            txs.append((x3, lo, _now_ms(c2)))
            c2.commit()
            c2.execute("TRUNCATE a, b")
            x4 = _xid(c2)
            lo = _now_ms(c2)
            c2.commit()
            txs.append((x4, lo, _now_ms(c2)))
            c2.commit()
            c2.execute("INSERT INTO a VALUES (3, 'three')")
            x5 = _xid(c2)
            lo = _now_ms(c2)
            c2.commit()
            txs.append((x5, lo, _now_ms(c2)))
            c2.commit()
        events = wait_events(out, 13, svc)

    assert len(events) == 13
    got = [(e["source"]["table"], e["op"], e["key"]) for e in events]
    expected_groups: list[list[tuple[str, str, dict[str, int] | None]]] = [
        [("b", "c", {"id": 1}), ("a", "c", {"id": 2}), ("b", "u", {"id": 1})],
        [
            ("a", "c", {"id": 1}),
            ("b", "c", {"id": 2}),
            ("a", "c", {"id": 10}),
            ("a", "c", {"id": 11}),
        ],
        [("a", "u", {"id": 1}), ("b", "d", {"id": 1}), ("a", "d", {"id": 10})],
        [("a", "t", None), ("b", "t", None)],
        [("a", "c", {"id": 3})],
    ]
    assert got == [x for g in expected_groups for x in g]

    # contiguous transactions, one per group, ids and positions
    assert len({e["id"] for e in events}) == len(events)
    groups: list[list[dict[str, Any]]] = []
    for e in events:
        if not groups or groups[-1][0]["transaction"]["id"] != e["transaction"]["id"]:
            groups.append([])
        groups[-1].append(e)
    assert [len(g) for g in groups] == [len(g) for g in expected_groups]
    assert len({g[0]["transaction"]["id"] for g in groups}) == len(groups), (
        "a transaction id recurs"
    )
    last_lsn = -1
    db = dbname(pgdb)
    for g, (xid, lo, hi) in zip(groups, txs, strict=True):
        for i, e in enumerate(g):
            src, tx = e["source"], e["transaction"]
            assert tx == {"id": src["lsn"], "seq": i, "last": i == len(g) - 1}
            assert e["id"] == f"pg:{src['lsn']}:{i}"
            assert lsn_int(src["lsn"]) >= last_lsn
            last_lsn = lsn_int(src["lsn"])
            assert src["tx"] == xid
            assert lo - 1 <= src["ts_ms"] <= hi + 1, (lo, src["ts_ms"], hi)
            assert e["ts_ms"] >= src["ts_ms"] - 1
            assert src["connector"] == "postgres" and src["pipeline"] == "tx" and src["db"] == db
            assert src["schema"] == "public" and src["snapshot"] is False
            assert e["schema"] == {"name": f"public.{src['table']}", "version": 1}
        assert len({e["source"]["lsn"] for e in g}) == 1
    for e in events:
        if e["op"] == "c":
            assert e["before"] is None and e["after"]["id"] == e["key"]["id"]
        if e["op"] == "t":
            assert e["key"] is None and e["before"] is None and e["after"] is None
    # under DEFAULT identity: an update has no before, a delete the key only
    upd = [e for e in events if e["op"] == "u"]
    assert [e["after"] for e in upd] == [{"id": 1, "w": 11}, {"id": 1, "v": "uno"}]
    assert all(e["before"] is None for e in upd)
    assert [e["before"] for e in events if e["op"] == "d"] == [{"id": 1}, {"id": 10}]
    assert fold(events, "public.a") == {orjson.dumps({"id": 3}): {"id": 3, "v": "three"}}
    assert fold(events, "public.b") == {}


# -- 3./4. replica identities ------------------------------------------------------------------------


def test_keyless_table_with_replica_identity_full_has_null_key_and_full_before(
    pgdb: str, tmp_path: Path, free_port: int
) -> None:
    sql_exec(
        pgdb,
        "CREATE TABLE public.nokey (a int, b text, c numeric(5,1))",
        "ALTER TABLE public.nokey REPLICA IDENTITY FULL",
    )
    out = tmp_path / "out"
    with service(tmp_path, free_port, [pg_pipeline("nokey", pgdb, ["public.nokey"], out)]) as svc:
        sql_exec(
            pgdb,
            "INSERT INTO nokey VALUES (1, 'x', 1.5), (2, NULL, 2)",
            "UPDATE nokey SET b = 'y', c = 9 WHERE a = 1",
            "DELETE FROM nokey WHERE a = 2",
        )
        events = wait_events(out, 4, svc)
    assert [e["op"] for e in events] == ["c", "c", "u", "d"]
    assert all(e["key"] is None for e in events)
    assert events[0]["after"] == {"a": 1, "b": "x", "c": "1.5"}
    assert events[2]["before"] == {"a": 1, "b": "x", "c": "1.5"}
    assert events[2]["after"] == {"a": 1, "b": "y", "c": "9.0"}
    assert events[3]["before"] == {"a": 2, "b": None, "c": "2.0"}
    assert events[3]["after"] is None
    assert schema_defs(out, "public.nokey")[1]["key"] == []


def test_default_identity_sends_no_before_on_update_and_key_on_delete_full_sends_row_and_pk_in_key_order(
    pgdb: str, tmp_path: Path, free_port: int
) -> None:
    sql_exec(
        pgdb,
        "CREATE TABLE public.dflt (id int PRIMARY KEY, v text, w int)",
        "CREATE TABLE public.dflt2 (a int, b int, v text, PRIMARY KEY (b, a))",
        "CREATE TABLE public.full2 (a int, b int, v text, PRIMARY KEY (b, a))",
        "ALTER TABLE public.full2 REPLICA IDENTITY FULL",
    )
    out = tmp_path / "out"
    tables = ["public.dflt", "public.dflt2", "public.full2"]
    with service(tmp_path, free_port, [pg_pipeline("ident", pgdb, tables, out)]) as svc:
        sql_exec(
            pgdb,
            "INSERT INTO dflt VALUES (5, 'five', 50)",
            "UPDATE dflt SET v = 'FIVE' WHERE id = 5",
            "DELETE FROM dflt WHERE id = 5",
            "INSERT INTO dflt2 VALUES (1, 2, 'x')",
            "DELETE FROM dflt2",
            "INSERT INTO full2 VALUES (1, 2, 'x')",
            "UPDATE full2 SET v = 'y'",
            "DELETE FROM full2",
        )
        events = wait_events(out, 8, svc)
    assert len(events) == 8
    d = table_events(events, "public.dflt")
    assert [e["op"] for e in d] == ["c", "u", "d"]
    assert d[1]["key"] == {"id": 5} and d[1]["before"] is None
    assert d[1]["after"] == {"id": 5, "v": "FIVE", "w": 50}
    assert d[2]["key"] == {"id": 5} and d[2]["before"] == {"id": 5} and d[2]["after"] is None

    d2 = table_events(events, "public.dflt2")
    assert [e["op"] for e in d2] == ["c", "d"]
    assert list(d2[0]["key"].items()) == [("b", 2), ("a", 1)]
    assert list(d2[1]["key"].items()) == [("b", 2), ("a", 1)]
    assert d2[1]["before"] == {"b": 2, "a": 1}

    f = table_events(events, "public.full2")
    assert [e["op"] for e in f] == ["c", "u", "d"]
    for e in f:
        assert list(e["key"].items()) == [("b", 2), ("a", 1)], "the primary key, in key order"
    assert f[0]["before"] is None and f[0]["after"] == {"a": 1, "b": 2, "v": "x"}
    assert f[1]["before"] == {"a": 1, "b": 2, "v": "x"} and f[1]["after"] == {
        "a": 1,
        "b": 2,
        "v": "y",
    }
    assert f[2]["before"] == {"a": 1, "b": 2, "v": "y"} and f[2]["after"] is None

    assert schema_defs(out, "public.dflt")[1]["key"] == ["id"]
    assert schema_defs(out, "public.dflt2")[1]["key"] == ["b", "a"]
    assert schema_defs(out, "public.full2")[1]["key"] == ["b", "a"]


# -- 5. key changes ------------------------------------------------------------------------------------


def test_update_changing_the_primary_key_is_a_delete_then_create_with_key_change(
    pgdb: str, tmp_path: Path, free_port: int
) -> None:
    sql_exec(
        pgdb,
        "CREATE TABLE public.k (id int PRIMARY KEY, v text)",
        "CREATE TABLE public.kf (a int, b int, v text, PRIMARY KEY (b, a))",
        "ALTER TABLE public.kf REPLICA IDENTITY FULL",
    )
    out = tmp_path / "out"
    with service(
        tmp_path, free_port, [pg_pipeline("keys", pgdb, ["public.k", "public.kf"], out)]
    ) as svc:
        sql_exec(
            pgdb,
            "INSERT INTO k VALUES (1, 'one')",
            "INSERT INTO kf VALUES (1, 2, 'x')",
        )
        with psycopg.connect(pgdb) as conn:
            conn.execute("UPDATE k SET id = 2, v = 'two' WHERE id = 1")
            conn.execute("UPDATE kf SET a = 3")
            conn.execute("UPDATE k SET v = 'still two' WHERE id = 2")
        events = wait_events(out, 7, svc)
    assert len(events) == 7
    tx = events[2:]
    assert len({e["transaction"]["id"] for e in tx}) == 1
    assert [e["transaction"]["seq"] for e in tx] == [0, 1, 2, 3, 4]
    assert [(e["source"]["table"], e["op"]) for e in tx] == [
        ("k", "d"),
        ("k", "c"),
        ("kf", "d"),
        ("kf", "c"),
        ("k", "u"),
    ]
    kd, kc, fd, fc, ku = tx
    assert kd["key"] == {"id": 1} and kd["before"] == {"id": 1} and kd["after"] is None
    assert kd["key_change"] == {"to": {"id": 2}}
    assert kc["key"] == {"id": 2} and kc["before"] is None and kc["after"] == {"id": 2, "v": "two"}
    assert kc["key_change"] == {"from": {"id": 1}}
    assert list(fd["key"].items()) == [("b", 2), ("a", 1)]
    assert fd["before"] == {"a": 1, "b": 2, "v": "x"} and fd["after"] is None
    assert fd["key_change"] == {"to": {"b": 2, "a": 3}}
    assert list(fd["key_change"]["to"]) == ["b", "a"]
    assert list(fc["key"].items()) == [("b", 2), ("a", 3)]
    assert fc["after"] == {"a": 3, "b": 2, "v": "x"} and fc["key_change"] == {
        "from": {"b": 2, "a": 1}
    }
    assert ku["key"] == {"id": 2} and "key_change" not in ku
    assert fold(events, "public.k") == {orjson.dumps({"id": 2}): {"id": 2, "v": "still two"}}


# -- 6. unchanged TOAST ----------------------------------------------------------------------------------


def test_unchanged_toast_is_named_under_default_and_taken_from_before_under_full(
    pgdb: str, tmp_path: Path, free_port: int
) -> None:
    rnd = random.Random(20261128)
    big = "".join(rnd.choices(string.ascii_letters + string.digits + " ", k=100_000))
    sql_exec(
        pgdb,
        "CREATE TABLE public.td (id int PRIMARY KEY, big text, n int)",
        "CREATE TABLE public.tf (id int PRIMARY KEY, big text, n int)",
        "ALTER TABLE public.tf REPLICA IDENTITY FULL",
    )
    out = tmp_path / "out"
    with service(
        tmp_path, free_port, [pg_pipeline("toast", pgdb, ["public.td", "public.tf"], out)]
    ) as svc:
        sql_exec(
            pgdb,
            ("INSERT INTO td VALUES (1, %s, 0)", (big,)),
            ("INSERT INTO tf VALUES (1, %s, 0)", (big,)),
        )
        with psycopg.connect(pgdb, autocommit=True) as conn:
            # really stored out of line (a TOAST pointer, not inline)
            for t in ("td", "tf"):
                row = conn.execute(f"SELECT pg_column_size(big) FROM {t}").fetchone()
                assert row is not None and row[0] > 2000
                row = conn.execute(
                    "SELECT pg_relation_size(reltoastrelid) FROM pg_class WHERE relname = %s", (t,)
                ).fetchone()
                assert row is not None and row[0] > 0
        sql_exec(
            pgdb,
            "UPDATE td SET n = 1",
            "UPDATE tf SET n = 1",
            "DELETE FROM tf",
        )
        events = wait_events(out, 5, svc)
    assert len(events) == 5
    raw = b"".join(f.read_bytes() for f in sorted(out.glob("events-*.jsonl")))

    td = table_events(events, "public.td")
    assert [e["op"] for e in td] == ["c", "u"]
    assert td[0]["after"] == {"id": 1, "big": big, "n": 0}
    upd = td[1]
    assert upd["before"] is None
    assert upd["after"] == {"id": 1, "n": 1}, "the unchanged TOAST column is left out"
    assert upd["unchanged"] == ["big"]
    assert fold(events, "public.td") == table_rows(pgdb, "public.td", ["id"])

    tf = table_events(events, "public.tf")
    assert [e["op"] for e in tf] == ["c", "u", "d"]
    upd = tf[1]
    assert upd["before"] == {"id": 1, "big": big, "n": 0}
    assert upd["after"] == {"id": 1, "big": big, "n": 1}
    assert "unchanged" not in upd
    assert tf[2]["before"] == {"id": 1, "big": big, "n": 1}
    # the big value appears exactly where it belongs: td insert; tf insert, update
    # before and after, delete before (never in td's update, never as a placeholder)
    assert raw.count(big.encode()) == 5


# -- 7. schema versions ---------------------------------------------------------------------------------


def test_alter_table_mid_stream_records_new_versions_and_nothing_else_does(
    pgdb: str, tmp_path: Path, free_port: int
) -> None:
    sql_exec(pgdb, "CREATE TABLE public.s (id int PRIMARY KEY, name varchar(20))")
    out = tmp_path / "out"
    pipelines = [pg_pipeline("ver", pgdb, ["public.s"], out)]
    with service(tmp_path, free_port, pipelines) as svc:
        sql_exec(
            pgdb,
            "INSERT INTO s VALUES (1, 'a')",
            "ALTER TABLE s ADD COLUMN extra int",
            "INSERT INTO s VALUES (2, 'b', 20)",
            "UPDATE s SET extra = 10 WHERE id = 1",
            "ALTER TABLE s ALTER COLUMN name TYPE varchar(50)",
            "INSERT INTO s VALUES (3, 'c', 30)",
            "CREATE INDEX s_name ON s (name)",
            "INSERT INTO s VALUES (4, 'd', 40)",
        )
        wait_events(out, 5, svc)
    config = tmp_path / "pipeline.yaml"
    # a restart re-sends identical Relation messages: no new version
    with CdcService(config) as svc:
        svc.wait_state("ver", "running")
        sql_exec(
            pgdb,
            "INSERT INTO s VALUES (5, 'e', 50)",
            "COMMENT ON TABLE s IS 'x'",
            "UPDATE s SET name = 'E' WHERE id = 5",
        )
        events = wait_events(out, 7, svc)
        assert svc.stop() == 0, svc.logs()[-4000:]

    assert len(events) == 7 and len({e["id"] for e in events}) == 7
    assert [(e["op"], e["schema"]["version"]) for e in events] == [
        ("c", 1), ("c", 2), ("u", 2), ("c", 3), ("c", 3), ("c", 3), ("u", 3),
    ]  # fmt: skip
    assert list(events[0]["after"]) == ["id", "name"]
    for e in events[1:]:
        assert list(e["after"]) == ["id", "name", "extra"]
    assert events[2]["after"] == {"id": 1, "name": "a", "extra": 10}

    schemas = [d for d in read_schemas(out) if d["name"] == "public.s"]
    assert sorted({d["version"] for d in schemas}) == [1, 2, 3]
    defs = schema_defs(out, "public.s")
    assert col_types(defs[1]) == {"id": "int4", "name": "varchar(20)"}
    assert col_types(defs[2]) == {"id": "int4", "name": "varchar(20)", "extra": "int4"}
    assert col_types(defs[3]) == {"id": "int4", "name": "varchar(50)", "extra": "int4"}
    assert [c["name"] for c in defs[3]["columns"]] == ["id", "name", "extra"]
    assert all(d["key"] == ["id"] for d in defs.values())

    result = run_cli("schemas", str(config), "--json")
    assert result.returncode == 0, result.stderr
    listed = [r for r in json.loads(result.stdout) if r["name"] == "public.s"]
    assert [(r["pipeline"], r["version"]) for r in listed] == [("ver", 1), ("ver", 2), ("ver", 3)]
    for r in listed:
        assert r["columns"] == defs[r["version"]]["columns"]
        assert r["key"] == ["id"]
    result = run_cli("schemas", str(config), "public.s")
    assert result.returncode == 0, result.stderr
    assert "varchar(50)" in result.stdout and "v3" in result.stdout


# -- 8. columns.exclude and values.bigint ------------------------------------------------------------------


def test_excluded_column_is_dropped_and_bigint_string_writes_int8_as_strings(
    pgdb: str, tmp_path: Path, free_port: int
) -> None:
    sql_exec(
        pgdb,
        "CREATE TABLE public.e (id int8 PRIMARY KEY, secret text, amount int8, n int4, arr int8[])",
    )
    out = tmp_path / "out"
    p = pg_pipeline("excl", pgdb, ["public.e"], out)
    p["columns"] = {"exclude": {"public.e": ["secret"]}}
    p["values"] = {"bigint": "string"}
    with service(tmp_path, free_port, [p]) as svc:
        sql_exec(
            pgdb,
            "INSERT INTO e VALUES (9007199254740993, 'ssn-1', -9223372036854775808, 7, '{1,NULL,9223372036854775807}')",
            "UPDATE e SET secret = 'ssn-2', amount = 1",
            "DELETE FROM e",
        )
        events = wait_events(out, 3, svc)
    assert len(events) == 3
    raw = b"".join(f.read_bytes() for f in sorted(out.glob("events-*.jsonl")))
    assert b"ssn-" not in raw and b"secret" not in raw
    c, u, d = events
    assert c["key"] == {"id": "9007199254740993"}
    assert c["after"] == {
        "id": "9007199254740993",
        "amount": "-9223372036854775808",
        "n": 7,
        "arr": ["1", None, "9223372036854775807"],
    }
    assert (
        u["key"] == {"id": "9007199254740993"}
        and u["after"]["amount"] == "1"
        and "secret" not in u["after"]
    )
    assert d["key"] == {"id": "9007199254740993"} and d["before"] == {"id": "9007199254740993"}
    defs = schema_defs(out, "public.e")
    assert list(defs) == [1]
    assert col_types(defs[1]) == {"id": "int8", "amount": "int8", "n": "int4", "arr": "int8[]"}
    assert defs[1]["key"] == ["id"]
    assert b"secret" not in (out / "schemas.jsonl").read_bytes()


# -- 9. partitioned tables -----------------------------------------------------------------------------------


def test_partitioned_table_changes_arrive_under_the_root_name(
    pgdb: str, tmp_path: Path, free_port: int
) -> None:
    sql_exec(
        pgdb,
        "CREATE TABLE public.m (id int, region text, v int, PRIMARY KEY (id, region)) PARTITION BY LIST (region)",
        "CREATE TABLE public.m_eu PARTITION OF public.m FOR VALUES IN ('eu')",
        "CREATE TABLE public.m_us PARTITION OF public.m FOR VALUES IN ('us')",
    )
    out = tmp_path / "out"
    with service(tmp_path, free_port, [pg_pipeline("parts", pgdb, ["public.m"], out)]) as svc:
        sql_exec(
            pgdb,
            "INSERT INTO m VALUES (1, 'eu', 10), (2, 'us', 20)",
            "INSERT INTO m_us VALUES (3, 'us', 30)",
            "UPDATE m SET v = 11 WHERE id = 1",
            "UPDATE m_us SET v = 31 WHERE id = 3",
            "DELETE FROM m WHERE id = 2",
            "TRUNCATE m_eu",  # a single partition: no event
            "INSERT INTO m VALUES (4, 'eu', 40)",
        )
        events = wait_events(out, 7, svc)
    assert len(events) == 7
    assert [(e["op"], e["key"]) for e in events] == [
        ("c", {"id": 1, "region": "eu"}),
        ("c", {"id": 2, "region": "us"}),
        ("c", {"id": 3, "region": "us"}),
        ("u", {"id": 1, "region": "eu"}),
        ("u", {"id": 3, "region": "us"}),
        ("d", {"id": 2, "region": "us"}),
        ("c", {"id": 4, "region": "eu"}),
    ]
    for e in events:
        assert e["source"]["schema"] == "public" and e["source"]["table"] == "m"
        assert e["schema"] == {"name": "public.m", "version": 1}
    assert {d["name"] for d in read_schemas(out)} == {"public.m"}


# -- 10. several pipelines, one failing -------------------------------------------------------------------


def test_two_pipelines_on_two_databases_run_and_a_failing_one_stops_alone(
    pgdb: str, pgdb2: str, tmp_path: Path, free_port: int
) -> None:
    sql_exec(pgdb, "CREATE TABLE public.t1 (id int PRIMARY KEY)")
    sql_exec(pgdb2, "CREATE TABLE public.t2 (id int PRIMARY KEY)")
    out1, out2, out3 = tmp_path / "one", tmp_path / "two", tmp_path / "bad"
    pipelines = [
        pg_pipeline("one", pgdb, ["public.t1"], out1),
        pg_pipeline("two", pgdb2, ["public.t2"], out2),
        pg_pipeline("bad", pgdb, ["public.t1", "public.missing"], out3),
    ]
    with service(tmp_path, free_port, pipelines, running=["one", "two"]) as svc:
        bad = svc.wait_state("bad", "failed")
        assert "public.missing" in bad["last_error"]["message"]
        assert "does not exist" in bad["last_error"]["message"]
        status, doc = svc.get("/pipelines")
        assert status == 200
        states = {p["name"]: p["state"] for p in doc["pipelines"]}
        assert states == {"one": "running", "two": "running", "bad": "failed"}
        status, health = svc.get("/healthz")
        assert status == 503
        assert [f["pipeline"] for f in health["failing"]] == ["bad"]
        assert "bad" in json.dumps(health)

        sql_exec(pgdb, "INSERT INTO t1 VALUES (1)", "INSERT INTO t1 VALUES (2)")
        sql_exec(pgdb2, "INSERT INTO t2 VALUES (1)")
        e1 = wait_events(out1, 2, svc)
        e2 = wait_events(out2, 1, svc)
        # still delivering after the failure was reported
        sql_exec(pgdb2, "INSERT INTO t2 VALUES (2)")
        e2 = wait_events(out2, 2, svc)
        assert svc.pipeline("one")["state"] == "running"
        assert svc.pipeline("bad")["state"] == "failed"
    assert [(e["source"]["pipeline"], e["source"]["db"], e["key"]) for e in e1] == [
        ("one", dbname(pgdb), {"id": 1}),
        ("one", dbname(pgdb), {"id": 2}),
    ]
    assert [(e["source"]["pipeline"], e["source"]["db"], e["key"]) for e in e2] == [
        ("two", dbname(pgdb2), {"id": 1}),
        ("two", dbname(pgdb2), {"id": 2}),
    ]
    assert not out3.exists() or read_events(out3) == []
