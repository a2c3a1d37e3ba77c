"""Event ids are unique across a whole pipeline (contract section 4): no two different changes
share one, whichever table, snapshot or chunk they come from, on every source.

The case that once broke this: an initial snapshot of several idle tables, where every chunk
of every table is read in the same database state (so shares a read token) and chunk numbers
restart per table."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from tests.helpers import (
    CdcService,
    execute,
    fold,
    pg_pipeline,
    read_complete_events,
    snapshot_reads,
    table_rows,
    wait_for,
    write_config,
)
from tests.integration.test_mysql_source import my_pipeline, table_state
from tests.mariadb_fixtures import MyDB

TABLES = ("orders", "customers", "items")
ROWS = 300
CHUNK = 100


def _assert_unique_ids(events: list[dict[str, Any]]) -> None:
    counts = Counter(e["id"] for e in events)
    shared = {i: n for i, n in counts.items() if n > 1}
    assert not shared, f"{len(shared)} ids shared by several events, e.g. {list(shared.items())[:3]}"


def _settle(out: Path, want: int, svc: CdcService) -> list[dict[str, Any]]:
    try:
        return wait_for(
            lambda: (ev := read_complete_events(out)) and len(ev) >= want and ev, 120, interval=0.2,
            what=f"{want} events",
        )
    except AssertionError as exc:
        have = len(read_complete_events(out))
        raise AssertionError(f"{exc}: the sink holds {have}; the service said:\n{svc.logs()[-6000:]}") from None


def test_initial_snapshot_of_idle_tables_gives_every_row_its_own_id_pg(
    pgdb: str, tmp_path: Path, free_port: int
) -> None:
    for t in TABLES:
        execute(
            pgdb,
            f"CREATE TABLE public.{t} (id int PRIMARY KEY, v text)",
            f"INSERT INTO public.{t} SELECT g, '{t}' || g FROM generate_series(1, {ROWS}) g",
        )
    out = tmp_path / "out"
    p = pg_pipeline("ids", pgdb, [f"public.{t}" for t in TABLES], out)
    p["snapshot"] = {"mode": "initial", "chunk_rows": CHUNK}
    cfg = write_config(tmp_path, [p], api_port=free_port)
    with CdcService(cfg) as svc:
        events = _settle(out, len(TABLES) * ROWS, svc)
        # then the stream, in the same pipeline: one id set for the whole pipeline
        execute(pgdb, "UPDATE public.orders SET v = 'x' WHERE id <= 5", "DELETE FROM public.items WHERE id = 7")
        events = _settle(out, len(TABLES) * ROWS + 6, svc)
    assert len(snapshot_reads(events)) == len(TABLES) * ROWS
    _assert_unique_ids(events)
    for t in TABLES:
        assert fold(events, f"public.{t}") == table_rows(pgdb, f"public.{t}", ["id"])


def test_initial_snapshot_of_idle_tables_gives_every_row_its_own_id_mariadb(
    mydb_any: MyDB, tmp_path: Path, free_port: int
) -> None:
    names = [mydb_any.table(t) for t in TABLES]
    for t, name in zip(TABLES, names, strict=True):
        mydb_any.execute(
            f"CREATE TABLE {name} (id INT PRIMARY KEY, v VARCHAR(40))",
            f"INSERT INTO {name} SELECT seq, CONCAT('{t}', seq) FROM seq_1_to_{ROWS}",
        )
    out = tmp_path / "out"
    p = my_pipeline("ids", mydb_any.dsn(), names, out)
    p["snapshot"] = {"mode": "initial", "chunk_rows": CHUNK}
    cfg = write_config(tmp_path, [p], api_port=free_port)
    with CdcService(cfg) as svc:
        events = _settle(out, len(TABLES) * ROWS, svc)
        mydb_any.execute(f"UPDATE {names[0]} SET v = 'x' WHERE id <= 5", f"DELETE FROM {names[2]} WHERE id = 7")
        events = _settle(out, len(TABLES) * ROWS + 6, svc)
    assert len(snapshot_reads(events)) == len(TABLES) * ROWS
    _assert_unique_ids(events)
    for name in names:
        assert fold(events, name) == table_state(mydb_any, name, ["id"], "id, v")
