"""The postgres sink on real servers: a PostgreSQL 15 source, PostgreSQL 15 and 18 targets
(``pgdb`` is parametrised over both), and a MariaDB source.

What the target holds is compared with what the source holds, row by row, through each
server's own JSON rendering of the rows (so types and values are compared, not our reading of
them)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from cdc_local.postgres import LocalPostgres
from tests.helpers import CdcService, wait_for, write_config
from tests.mariadb_fixtures import MyDB


@pytest.fixture
def src(pg15: LocalPostgres) -> Iterator[str]:
    """A source database on PostgreSQL 15 (the target is ``pgdb``, on 15 or 18)."""
    from tests.conftest import _drop_database

    name = f"s_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg15.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield pg15.dsn(name)
    finally:
        _drop_database(pg15, name)


def _run(dsn: str, *statements: str | tuple[str, Any]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for s in statements:
            if isinstance(s, tuple):
                conn.execute(s[0], s[1])
            else:
                conn.execute(s)


def _rows(dsn: str, table: str, order: str = "1") -> list[dict[str, Any]]:
    schema, _, name = table.partition(".")
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            sql.SQL("SELECT to_jsonb(t) FROM {}.{} t ORDER BY {}").format(
                sql.Identifier(schema), sql.Identifier(name), sql.SQL(order)
            )
        ).fetchall()
    return [r[0] for r in rows]


def _one(dsn: str, query: str, params: Any = None) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def _pipeline(source: dict[str, Any], target: str, **sink: Any) -> dict[str, Any]:
    return {
        "name": "model",
        "source": source,
        "snapshot": {"mode": "never"},
        "sink": {"type": "postgres", "dsn": target, **sink},
    }


def _pg_source(dsn: str, tables: list[str]) -> dict[str, Any]:
    return {"type": "postgres", "dsn": dsn, "tables": tables, "heartbeat_s": 1}


def _service(tmp_path: Path, port: int, pipeline: dict[str, Any]) -> CdcService:
    return CdcService(write_config(tmp_path, [pipeline], api_port=port))


def _failure(svc: CdcService, timeout: float = 30) -> str:
    """The error of the pipeline's failure (the service exits once its only pipeline failed)."""

    def failed() -> str | None:
        for e in svc.log_events():
            if e.get("event") == "pipeline_failed":
                return str(e.get("error"))
        return None

    return str(wait_for(failed, timeout, what="the pipeline's failure"))


def _same(src: str, target: str, table: str, order: str = "1") -> bool:
    try:
        return _rows(src, table, order) == _rows(target, table, order)
    except psycopg.errors.UndefinedTable:
        return False


def _wait_same(
    svc: CdcService, src: str, target: str, table: str, order: str = "1", timeout: float = 30
) -> None:
    try:
        wait_for(lambda: _same(src, target, table, order), timeout, what=f"{table} in the target")
    except AssertionError:
        state = svc.pipeline("model")
        assert _rows(src, table, order) == _rows(target, table, order), (state, svc.logs()[-3000:])


TYPES = """
CREATE TABLE public.kinds (
  id int PRIMARY KEY, name text, price numeric(12,2), at timestamptz, day date, big int8,
  ratio float8, flag boolean, doc jsonb, raw bytea, tags int4[], u uuid, span interval,
  code varchar(5), bits bit(4), long text
);
ALTER TABLE public.kinds ALTER COLUMN long SET STORAGE EXTERNAL;
CREATE TABLE public.logs (at int, message text);
ALTER TABLE public.logs REPLICA IDENTITY FULL;
"""


def test_tables_follow_the_source_in_commit_order(
    tmp_path: Path, src: str, pgdb: str, free_port: int
) -> None:
    _run(src, TYPES)
    big = "x" * 20000  # stored out of line: updates that do not touch it leave it unchanged
    pipeline = _pipeline(_pg_source(src, ["public.kinds", "public.logs"]), pgdb)
    with _service(tmp_path, free_port, pipeline) as svc:
        svc.wait_state("model", "running")
        _run(
            src,
            "INSERT INTO kinds SELECT i, 'n' || i, i * 1.25, '2026-11-28 12:00+02'::timestamptz + "
            "i * interval '1 hour', '2026-01-01'::date + i, 9007199254740993 + i, i / 3.0, "
            "i % 2 = 0, jsonb_build_object('i', i, 'big', 123456789012345678901234567890), "
            "decode('00ff' || lpad(to_hex(i), 4, '0'), 'hex'), ARRAY[i, i + 1], "
            "gen_random_uuid(), make_interval(days => i, secs => 1.5), 'c' || i, B'1010', NULL "
            "FROM generate_series(1, 300) i",
            "UPDATE kinds SET ratio = 'NaN', day = 'infinity', span = interval '-1 year 2 months' "
            "WHERE id = 7",
            ("UPDATE kinds SET long = %s WHERE id <= 20", (big,)),
            "UPDATE kinds SET name = 'renamed' WHERE id <= 10",  # long unchanged (TOAST)
            "DELETE FROM kinds WHERE id BETWEEN 50 AND 60",
            "UPDATE kinds SET id = id + 1000 WHERE id = 5",  # key change: d + c
            "INSERT INTO logs SELECT i % 3, 'm' FROM generate_series(1, 9) i",
            "DELETE FROM logs WHERE ctid = (SELECT ctid FROM logs WHERE at = 1 LIMIT 1)",
            "UPDATE logs SET message = 'changed' WHERE ctid = (SELECT ctid FROM logs WHERE at = 2 "
            "LIMIT 1)",
        )
        _wait_same(svc, src, pgdb, "public.kinds")
        _wait_same(svc, src, pgdb, "public.logs", "to_jsonb(t)::text")
        # a run of changes of one key inside one transaction, collapsed to its last state
        with psycopg.connect(src) as conn:
            conn.execute("INSERT INTO kinds (id, name) VALUES (5000, 'a')")
            conn.execute("UPDATE kinds SET name = 'b' WHERE id = 5000")
            conn.execute("DELETE FROM kinds WHERE id = 5000")
            conn.execute("INSERT INTO kinds (id, name, long) VALUES (5000, 'c', %s)", (big,))
            conn.execute("UPDATE kinds SET name = 'd' WHERE id = 5000")
        _wait_same(svc, src, pgdb, "public.kinds")
        _run(src, "TRUNCATE logs", "INSERT INTO logs VALUES (42, 'after truncate')")
        _wait_same(svc, src, pgdb, "public.logs", "to_jsonb(t)::text")
        assert svc.stop() == 0
        logs = svc.logs()
    assert "no primary key" in logs and "public.logs" in logs
    position = _one(
        pgdb, "SELECT position::jsonb FROM public.cdc_sink_positions WHERE pipeline = 'model'"
    )
    assert position["count"] > 300 and position["last_id"].startswith("pg:")
    assert position["source"]["lsn"]
    with psycopg.connect(pgdb, autocommit=True) as conn:
        key = conn.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'public.kinds'::regclass "
            "AND i.indisprimary"
        ).fetchall()
        assert key == [("id",)]
        types = dict(
            conn.execute(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE "
                "attrelid = 'public.kinds'::regclass AND attnum > 0"
            ).fetchall()
        )
    assert types["price"] == "numeric(12,2)" and types["tags"] == "integer[]"
    assert types["code"] == "character varying(5)" and types["doc"] == "jsonb"


def test_restart_resumes_without_duplicates_on_a_keyless_table(
    tmp_path: Path, src: str, pgdb: str, free_port: int
) -> None:
    _run(
        src,
        "CREATE TABLE public.logs (at int, message text)",
        "ALTER TABLE logs REPLICA IDENTITY FULL",
    )
    pipeline = _pipeline(_pg_source(src, ["public.logs"]), pgdb)
    with _service(tmp_path, free_port, pipeline) as svc:
        svc.wait_state("model", "running")
        for i in range(20):
            _run(src, f"INSERT INTO logs SELECT {i}, 'm' FROM generate_series(1, 50)")
        wait_for(lambda: _one(pgdb, "SELECT count(*) FROM logs") == 1000, 30, what="1000 rows")
        svc.kill()
    _run(src, "INSERT INTO logs SELECT 99, 'after' FROM generate_series(1, 10)")
    with _service(tmp_path, free_port, pipeline) as svc:
        svc.wait_state("model", "running")
        wait_for(lambda: _one(pgdb, "SELECT count(*) FROM logs") >= 1010, 30, what="1010 rows")
        assert svc.stop() == 0
    assert _one(pgdb, "SELECT count(*) FROM logs") == 1010


def test_schema_changes_reach_the_target_table(
    tmp_path: Path, src: str, pgdb: str, free_port: int
) -> None:
    _run(src, "CREATE TABLE public.items (id int PRIMARY KEY, name text NOT NULL, qty int)")
    pipeline = _pipeline(_pg_source(src, ["public.items"]), pgdb)
    with _service(tmp_path, free_port, pipeline) as svc:
        svc.wait_state("model", "running")
        _run(src, "INSERT INTO items VALUES (1, 'a', 1), (2, 'b', 2)")
        _run(
            src,
            "ALTER TABLE items ADD COLUMN note text",
            "INSERT INTO items VALUES (3, 'c', 3, 'n3')",
            "ALTER TABLE items ALTER COLUMN qty TYPE bigint",
            "UPDATE items SET qty = 10000000000 WHERE id = 1",
            "ALTER TABLE items DROP COLUMN name",
            "INSERT INTO items VALUES (4, 4, 'n4')",
        )
        wait_for(lambda: _one(pgdb, "SELECT count(*) FROM items") == 4, 30, what="4 rows")
        wait_for(
            lambda: _one(pgdb, "SELECT qty FROM items WHERE id = 1") == 10000000000, 30, what="qty"
        )
        with psycopg.connect(pgdb, autocommit=True) as conn:
            cols = {
                r[0]: (r[1], r[2])
                for r in conn.execute(
                    "SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM "
                    "pg_attribute WHERE attrelid = 'public.items'::regclass AND attnum > 0 "
                    "AND NOT attisdropped"
                ).fetchall()
            }
            assert cols["qty"][0] == "bigint" and cols["note"][0] == "text"
            assert cols["name"] == ("text", False), "a dropped column stays, nullable"
            rows = conn.execute("SELECT id, name, qty, note FROM items ORDER BY id").fetchall()
        assert rows == [
            (1, "a", 10000000000, None),
            (2, "b", 2, None),
            (3, "c", 3, "n3"),
            (4, None, 4, "n4"),
        ]
        # a type change PostgreSQL cannot cast: the pipeline stops naming the column
        _run(
            src,
            "ALTER TABLE items ALTER COLUMN note TYPE int4range USING NULL",
            "INSERT INTO items VALUES (5, 5, '[1,2)')",
        )
        text = _failure(svc)
        assert "note" in text and "cast" in text, text
    assert _one(pgdb, "SELECT count(*) FROM items") == 4


def test_soft_deletes_keep_rows_and_a_reinsert_revives_them(
    tmp_path: Path, src: str, pgdb: str, free_port: int
) -> None:
    _run(src, "CREATE TABLE public.items (id int PRIMARY KEY, name text)")
    pipeline = _pipeline(_pg_source(src, ["public.items"]), pgdb, deletes="soft")
    with _service(tmp_path, free_port, pipeline) as svc:
        svc.wait_state("model", "running")
        # inserted and deleted within one batch, or across batches: the row stays, deleted
        _run(
            src,
            "INSERT INTO items VALUES (1, 'a'), (2, 'b'), (3, 'c')",
            "DELETE FROM items WHERE id < 3",
        )
        _run(src, "INSERT INTO items VALUES (2, 'again')")
        with psycopg.connect(src) as conn:
            conn.execute("INSERT INTO items VALUES (4, 'd')")
            conn.execute("DELETE FROM items WHERE id = 4")

        def state() -> list[tuple[Any, ...]]:
            with psycopg.connect(pgdb, autocommit=True) as conn:
                return conn.execute("SELECT id, name, __deleted FROM items ORDER BY id").fetchall()

        want = [(1, "a", True), (2, "again", False), (3, "c", False), (4, "d", True)]
        try:
            wait_for(lambda: state() == want, 30, what=f"{want}")
        except AssertionError:
            assert state() == want
        # a key change: the old key's row stays, deleted; the new key's row is live
        _run(src, "UPDATE items SET id = 30 WHERE id = 3")
        want = [
            (1, "a", True),
            (2, "again", False),
            (3, "c", True),
            (4, "d", True),
            (30, "c", False),
        ]
        try:
            wait_for(lambda: state() == want, 30, what=f"{want}")
        except AssertionError:
            assert state() == want
        # a truncate marks every row deleted
        _run(src, "TRUNCATE items", "INSERT INTO items VALUES (5, 'e')")
        want = [
            (1, "a", True),
            (2, "again", True),
            (3, "c", True),
            (4, "d", True),
            (5, "e", False),
            (30, "c", True),
        ]
        try:
            wait_for(lambda: state() == want, 30, what=f"{want}")
        except AssertionError:
            assert state() == want
        assert svc.stop() == 0


def test_an_existing_table_of_another_shape_is_refused_and_a_compatible_one_adopted(
    tmp_path: Path, src: str, pgdb: str, free_port: int
) -> None:
    _run(src, "CREATE TABLE public.items (id int PRIMARY KEY, name text, qty int)")
    _run(
        pgdb, "CREATE TABLE public.items (id int PRIMARY KEY, name varchar(3), extra int NOT NULL)"
    )
    pipeline = _pipeline(_pg_source(src, ["public.items"]), pgdb, adopt_tables=True)
    with _service(tmp_path, free_port, pipeline) as svc:
        svc.wait_state("model", "running")
        _run(src, "INSERT INTO items VALUES (1, 'a', 1)")
        text = _failure(svc)
        assert (
            "public.items" in text
            and "column qty" in text
            and "column name is character varying(3)" in text
        )
        assert "extra is NOT NULL" in text, text
    # a compatible table (an extra nullable column, a CHECK) is adopted; a value it refuses
    # stops the pipeline naming the event
    _run(
        pgdb,
        "DROP TABLE public.items",
        "CREATE TABLE public.items (id int PRIMARY KEY, name text, qty int CHECK (qty >= 0), seen "
        "timestamptz)",
    )
    with _service(tmp_path, free_port, pipeline) as svc:
        svc.wait_state("model", "running")
        _run(src, "INSERT INTO items VALUES (2, 'b', 2)")
        wait_for(lambda: _one(pgdb, "SELECT count(*) FROM items") == 2, 30, what="adopted")
        _run(src, "INSERT INTO items VALUES (3, 'c', -3)")
        text = _failure(svc)
        assert "refused event pg:" in text and "23514" in text, text


def test_an_existing_table_is_not_adopted_unless_asked(
    tmp_path: Path, src: str, pgdb: str, free_port: int
) -> None:
    _run(src, "CREATE TABLE public.items (id int PRIMARY KEY, name text)")
    _run(pgdb, "CREATE TABLE public.items (id int PRIMARY KEY, name text)")
    with _service(tmp_path, free_port, _pipeline(_pg_source(src, ["public.items"]), pgdb)) as svc:
        svc.wait_state("model", "running")
        _run(src, "INSERT INTO items VALUES (1, 'a')")
        text = _failure(svc)
        assert "adopt_tables: true" in text, text


def test_a_target_user_without_create_is_told_the_grant(
    tmp_path: Path, src: str, pgdb: str, free_port: int
) -> None:
    _run(src, "CREATE TABLE public.items (id int PRIMARY KEY, name text)")
    user = f"u_{uuid.uuid4().hex[:8]}"
    _run(
        pgdb,
        f"CREATE ROLE {user} LOGIN",
        "CREATE TABLE public.cdc_sink_positions (pipeline text PRIMARY KEY, position text, "
        "updated_at timestamptz)",
        f"GRANT SELECT, INSERT, UPDATE ON public.cdc_sink_positions TO {user}",
        f"REVOKE CREATE ON SCHEMA public FROM {user}, PUBLIC",
        f"REVOKE CREATE ON DATABASE {pgdb.rpartition('/')[2].split('?')[0]} FROM {user}, PUBLIC",
    )
    target = psycopg.conninfo.make_conninfo(pgdb, user=user)
    pipeline = _pipeline(_pg_source(src, ["public.items"]), target, schema="model")
    try:
        with _service(tmp_path, free_port, pipeline) as svc:
            svc.wait_state("model", "running")
            _run(src, "INSERT INTO items VALUES (1, 'a')")
            text = _failure(svc)
            assert "GRANT CREATE ON DATABASE" in text, text
    finally:
        _run(pgdb, f"DROP OWNED BY {user}", f"DROP ROLE {user}")


def test_format_debezium_and_unwrap_are_refused_for_this_sink(
    tmp_path: Path, free_port: int
) -> None:
    from cdc.config_loader import load_config
    from cdc.errors import ConfigError

    pipeline = _pipeline(
        _pg_source("postgresql://u@127.0.0.1:1/db", ["public.a"]), "postgresql://u@127.0.0.1:1/t"
    )
    pipeline["sink"]["format"] = "debezium"
    pipeline["transforms"] = [{"unwrap": {}}]
    with pytest.raises(ConfigError) as info:
        load_config(str(write_config(tmp_path, [pipeline], api_port=free_port)), environ={})
    found = {(p.path, p.message) for p in info.value.problems}
    assert any(p == "pipelines[0].sink.format" and "does not take" in m for p, m in found), found
    unwrap = [m for p, m in found if p.startswith("pipelines[0].transforms") and "unwrap" in m]
    assert unwrap == ["unwrap does not apply to the postgres sink"], found


MY_TYPES = """
CREATE TABLE {db}.things (
  id int unsigned PRIMARY KEY, small tinyint, big bigint unsigned, price decimal(10,3),
  ratio double, name varchar(20), fixed char(3), body text, raw varbinary(8), blobby blob,
  day date, at datetime(3), ts timestamp(6) NULL, span time, yr year, flags bit(5),
  mood enum('happy','sad'), tags set('a','b','c'), doc json
)
"""


def test_mariadb_source_types_map_to_postgres(
    tmp_path: Path, mydb: MyDB, pg15: LocalPostgres, free_port: int
) -> None:
    from tests.conftest import _drop_database

    target_name = f"t_{uuid.uuid4().hex[:10]}"
    _run(pg15.dsn(), f"CREATE DATABASE {target_name}")
    target = pg15.dsn(target_name)
    try:
        mydb.execute(MY_TYPES.format(db=mydb.name))
        source = {"type": "mysql", "dsn": mydb.dsn(), "tables": [f"{mydb.name}.things"]}
        pipeline = _pipeline(source, target, schema="mirror")
        with _service(tmp_path, free_port, pipeline) as svc:
            svc.wait_state("model", "running", timeout=60)
            mydb.execute(
                f"INSERT INTO {mydb.name}.things VALUES (4000000000, -5, 18446744073709551615, "
                "'12.345', 0.5, 'héllo', 'ab', 'text', x'00ff10', x'cafe', '2026-11-28', "
                "'2026-11-28 13:45:01.123', '2026-11-28 12:45:01.123456', '-838:59:59', 2026, "
                "b'10110', 'sad', 'a,c', '{\"k\": [1, 2.5, \"x\"], \"n\": 12345678901234567890}')",
                f"INSERT INTO {mydb.name}.things (id) VALUES (1)",
                f"UPDATE {mydb.name}.things SET name = 'changed' WHERE id = 1",
                f"DELETE FROM {mydb.name}.things WHERE id = 1",
            )
            wait_for(
                lambda: (
                    _one(target, "SELECT count(*) FROM mirror.things WHERE id = 4000000000") == 1
                ),
                60,
                what="the row",
            )
            wait_for(
                lambda: _one(target, "SELECT count(*) FROM mirror.things") == 1, 30, what="delete"
            )
            with psycopg.connect(target, autocommit=True) as conn:
                row = conn.execute(
                    "SELECT id, small, big::text, price::text, ratio, name, fixed, body, "
                    "encode(raw, 'hex'), encode(blobby, 'hex'), day::text, at::text, ts, "
                    "span::text, yr, flags::text, mood, tags, doc FROM mirror.things"
                ).fetchone()
                types = dict(
                    conn.execute(
                        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                        "WHERE attrelid = 'mirror.things'::regclass AND attnum > 0"
                    ).fetchall()
                )
            assert row is not None
            assert row[:12] == (
                4000000000,
                -5,
                "18446744073709551615",
                "12.345",
                0.5,
                "héllo",
                "ab",
                "text",
                "00ff10",
                "cafe",
                "2026-11-28",
                "2026-11-28 13:45:01.123",
            )
            assert row[12].isoformat() == "2026-11-28T12:45:01.123456+00:00"
            assert row[13] == "-838:59:59" and row[14] == 2026 and row[15] == "10110"
            assert row[16] == "sad" and row[17] == ["a", "c"]
            assert row[18] == {"k": [1, 2.5, "x"], "n": 12345678901234567890}
            assert types["id"] == "bigint" and types["big"] == "numeric(20,0)"
            assert types["at"] == "timestamp(3) without time zone" and types["tags"] == "text[]"
            # a column whose type has no mapping: fatal at its schema, naming it
            mydb.execute(
                f"ALTER TABLE {mydb.name}.things ADD COLUMN spot point",
                f"INSERT INTO {mydb.name}.things (id, spot) VALUES (2, POINT(1, 2))",
            )
            text = _failure(svc)
            assert "column spot" in text and "point" in text, text
    finally:
        _drop_database(pg15, target_name)


def test_a_batch_committed_after_the_checkpoint_is_not_applied_again(pgdb: str) -> None:
    """The crash window: the target committed a batch, the checkpoint was not saved; the
    pipeline delivers the batch again from the older checkpoint and the sink skips it."""
    from sinks.postgres import PostgresSink, PostgresSinkConfig
    from tests.sink_events import context, event, keyless

    sink = PostgresSink(PostgresSinkConfig(dsn=pgdb), context())
    sink.open(None)
    sink.write([keyless(i) for i in range(1, 6)] + [event(1)])
    token = sink.flush()  # saved with the checkpoint
    again = [keyless(i) for i in range(6, 11)] + [event(2)]
    sink.write(again)
    sink.flush()  # committed in the target, then a crash before the checkpoint is saved
    sink.close()
    sink = PostgresSink(PostgresSinkConfig(dsn=pgdb), context())
    sink.open(token)
    sink.write(again[:3])
    sink.write(again[3:] + [keyless(11)])
    assert sink.flush() == "13"
    sink.close()
    assert _one(pgdb, "SELECT count(*) FROM public.log") == 11
    assert _one(pgdb, "SELECT count(*) FROM public.orders") == 2
    # `cdc drop`: the position row is moved aside (kept), the tables stay
    assert sink.holds_events()
    assert any("cdc_sink_positions" in line for line in sink.describe_drop())
    assert sink.drop()[0].startswith("renamed the row shop")
    assert not sink.holds_events()
    assert (
        _one(
            pgdb,
            "SELECT count(*) FROM public.cdc_sink_positions WHERE pipeline LIKE 'shop:dropped-%'",
        )
        == 1
    )
    assert _one(pgdb, "SELECT count(*) FROM public.log") == 11


def test_snapshots_fill_the_tables_and_a_keyless_snapshot_replaces_its_rows(
    tmp_path: Path, src: str, pgdb: str, free_port: int
) -> None:
    _run(
        src,
        "CREATE TABLE public.items (id int PRIMARY KEY, name text)",
        "INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 500) g",
        "CREATE TABLE public.logs (at int, message text)",
        "ALTER TABLE logs REPLICA IDENTITY FULL",
        "INSERT INTO logs SELECT g % 7, 'm' FROM generate_series(1, 300) g",
    )
    pipeline = _pipeline(_pg_source(src, ["public.items", "public.logs"]), pgdb)
    pipeline["snapshot"] = {"mode": "initial", "chunk_rows": 100}
    with _service(tmp_path, free_port, pipeline) as svc:
        svc.wait_state("model", "running")
        _run(
            src,
            "UPDATE items SET name = 'changed' WHERE id % 10 = 0",
            "DELETE FROM items WHERE id > 450",
        )
        _run(src, "INSERT INTO logs VALUES (99, 'streamed')")
        _wait_same(svc, src, pgdb, "public.items")
        _wait_same(svc, src, pgdb, "public.logs", "to_jsonb(t)::text")
        # an on-demand snapshot of the keyless table: its rows replace the target's, once
        status, doc = svc.get(
            "/pipelines/model/snapshots", method="POST", body={"tables": ["public.logs"]}
        )
        assert status in (200, 201, 202), doc
        wait_for(
            lambda: (
                (svc.pipeline("model").get("snapshot") or {}).get("state")
                in ("done", "finished", "idle", None)
                and _same(src, pgdb, "public.logs", "to_jsonb(t)::text")
            ),
            30,
            what="the second snapshot",
        )
        _run(src, "INSERT INTO logs VALUES (100, 'after')")
        _wait_same(svc, src, pgdb, "public.logs", "to_jsonb(t)::text")
        assert svc.stop() == 0
    assert _one(pgdb, "SELECT count(*) FROM logs") == 302


def test_a_value_the_target_refuses_is_dead_lettered_and_the_rest_applied(
    tmp_path: Path, src: str, pgdb: str, free_port: int
) -> None:
    """With `dead_letter`, the one event the target refuses goes there (with the reason) and
    the events before and after it in the same batch are applied; the pipeline goes on."""
    from tests.integration.test_dead_letters import _letters

    _run(src, "CREATE TABLE public.items (id int PRIMARY KEY, name text, qty int)")
    _run(pgdb, "CREATE TABLE public.items (id int PRIMARY KEY, name text, qty int CHECK (qty >= 0))")
    dead = tmp_path / "dead"
    pipeline = _pipeline(_pg_source(src, ["public.items"]), pgdb, adopt_tables=True)
    pipeline["dead_letter"] = {"type": "file", "path": str(dead)}
    with _service(tmp_path, free_port, pipeline) as svc:
        svc.wait_state("model", "running")
        # one transaction: the refused row sits between two good ones
        _run(src, "BEGIN; INSERT INTO items VALUES (1, 'a', 1), (2, 'b', -2), (3, 'c', 3); COMMIT")
        _run(src, "INSERT INTO items VALUES (4, 'd', 4)")
        wait_for(lambda: _one(pgdb, "SELECT count(*) FROM items") == 3 and len(_letters(dead)) == 1,
                 30, what="3 rows applied and 1 dead letter")
        assert svc.pipeline("model")["state"] == "running"
        assert svc.pipeline("model")["dead_letters"] == 1
        assert svc.stop() == 0
    assert [r["id"] for r in _rows(pgdb, "public.items")] == [1, 3, 4]
    (letter,) = _letters(dead)
    assert letter["sink"] == "postgres" and letter["event"]["after"]["id"] == 2
    assert "23514" in letter["error"] and letter["event"]["id"] in letter["error"]
