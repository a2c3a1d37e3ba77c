"""The contract every source passes (CONTRACT.md sections 4, 5 and 7): one suite, parametrised
over the sources in tests/source_harness.HARNESSES (PostgreSQL 15 and 18, MariaDB with file
positions and with GTIDs), each writing the same changes in its own dialect to the file sink.

- commit order across tables, contiguous transactions (``seq`` from 0, ``last`` on the final
  event), ids unique across the pipeline and in their documented format;
- a key change as ``d`` (``key_change.to``) then ``c`` (``key_change.from``);
- a truncate as one ``t`` with null key, before and after;
- ``before``: exactly what the source sends (whole rows from MariaDB and from PostgreSQL
  REPLICA IDENTITY FULL; the key of a deleted row and nothing on update under DEFAULT);
- schema version 1, then 2 after ALTER TABLE ADD COLUMN, each definition in the sink before
  the first event that uses it;
- NULLs and the common types the contract maps alike on every source read the same: integers,
  bigint beyond 2**53, text/varchar, numeric/decimal as exact strings, double, date, and
  timestamp/DATETIME. (Booleans are not among them: MySQL's BOOLEAN is TINYINT(1), an integer,
  which the contract writes as a number.)
- an initial snapshot (``r``, ``snapshot: true``, ``transaction: null``) then the stream, which
  fold to the table;
- ``kill -9`` in the middle of a transaction, then a restart: the events delivered before the
  kill (no checkpoint covers them) are delivered again with the same ids.

The stream workload runs once per source (a module-scoped fixture) and the tests check its
events from several sides, so the suite stays fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from cdc_local.postgres import free_port
from tests.helpers import (
    CdcService,
    dedupe,
    fold,
    read_complete_events,
    read_schemas,
    snapshot_reads,
    wait_for,
    write_config,
)
from tests.source_harness import HARNESSES, SourceHarness

ITEMS = [("id", "int"), ("name", "text"), ("qty", "int")]
NOTES = [("id", "int"), ("body", "text")]
KINDS = [
    ("id", "int"),
    ("i", "int"),
    ("big", "bigint"),
    ("s", "text"),
    ("num", "decimal"),
    ("neg", "decimal"),
    ("f", "double"),
    ("day", "date"),
    ("at", "timestamp"),
]
KINDS_VALUES = (
    "(1, -42, 9007199254740993, 'ünï ☃ \"q\"', 19.90, -0.5, 0.25, '2026-11-28', '2026-11-28 13:45:01.123456')",
    "(2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
)
#: what every source delivers for KINDS_VALUES (contract section 4, Values)
KINDS_AFTER = [
    {
        "id": 1,
        "i": -42,
        "big": 9007199254740993,
        "s": 'ünï ☃ "q"',
        "num": "19.90",
        "neg": "-0.50",
        "f": 0.25,
        "day": "2026-11-28",
        "at": "2026-11-28T13:45:01.123456",
    },
    {
        "id": 2,
        "i": None,
        "big": None,
        "s": None,
        "num": None,
        "neg": None,
        "f": None,
        "day": None,
        "at": None,
    },
]


@pytest.fixture(scope="module", params=sorted(HARNESSES))
def source(request: pytest.FixtureRequest) -> Iterator[SourceHarness]:
    h = HARNESSES[request.param](request)
    try:
        yield h
    finally:
        h.close()


# -- running the service and reading the file sink -------------------------------------------------


def _pipeline(
    source: SourceHarness, name: str, tables: list[str], out: Path, snapshot: str = "never"
) -> dict[str, Any]:
    return {
        "name": name,
        "source": source.source_config([source.table(t) for t in tables]),
        "snapshot": {"mode": snapshot, "chunk_rows": 100},
        "sink": {"type": "file", "path": str(out)},
    }


def _start(folder: Path, pipeline: dict[str, Any]) -> CdcService:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "pipeline.yaml"
    if not config.exists():
        write_config(folder, [pipeline], api_port=free_port())
    svc = CdcService(config)
    svc.wait_state(pipeline["name"], "running")
    return svc


def _delivered(out: Path, svc: CdcService | None = None) -> list[dict[str, Any]]:
    """The events the sink holds now; every schema version they use must already be there."""
    if svc is not None and svc.proc.poll() is not None:
        raise AssertionError(f"cdc exited with {svc.proc.returncode}:\n{svc.logs()[-4000:]}")
    events = read_complete_events(out) if out.exists() else []
    held = {(s["name"], s["version"]) for s in read_schemas(out)} if out.exists() else set()
    for e in events:  # read after the events: a definition written before its event is seen
        used = (e["schema"]["name"], e["schema"]["version"])
        assert used in held, f"{e['id']} uses {used} before the sink holds its definition"
    return events


def _wait_events(
    out: Path, svc: CdcService, done: Any, what: str, timeout: float = 60
) -> list[dict[str, Any]]:
    try:
        return wait_for(
            lambda: (ev := _delivered(out, svc)) and done(ev) and ev, timeout, what=what
        )  # type: ignore[no-any-return]
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- cdc log ---\n{svc.logs()[-4000:]}") from None


def _folds_to_table(source: SourceHarness, table: str, events: list[dict[str, Any]]) -> bool:
    return fold(dedupe(events), source.table(table)) == source.rows(table, ["id"])


# -- one stream workload per source ------------------------------------------------------------


@dataclass
class Streamed:
    source: SourceHarness
    events: list[dict[str, Any]]
    schemas: list[dict[str, Any]]

    def of(self, table: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["schema"]["name"] == self.source.table(table)]


#: (table, op) of the events the workload below makes, in commit order
EXPECTED_OPS = [
    ("items", "c"),
    ("items", "c"),
    ("notes", "c"),
    ("items", "u"),
    ("notes", "c"),
    ("items", "u"),
    ("notes", "u"),
    ("items", "d"),
    ("notes", "d"),
    ("items", "d"),
    ("items", "c"),
    ("notes", "t"),
    ("items", "c"),
    ("kinds", "c"),
    ("kinds", "c"),
]


@pytest.fixture(scope="module")
def streamed(source: SourceHarness, tmp_path_factory: pytest.TempPathFactory) -> Streamed:
    """Tables items (default settings), notes (whole old rows where that is a table setting)
    and kinds; one service run over inserts, a multi-table transaction, updates, deletes, a key
    change, a truncate, an ALTER TABLE ADD COLUMN and every common kind of value."""
    source.create_table("items", ITEMS, ["id"])
    source.create_table("notes", NOTES, ["id"], full_identity=True)
    source.create_table("kinds", KINDS, ["id"])
    folder = tmp_path_factory.mktemp(f"stream-{source.name}")
    out = folder / "out"
    svc = _start(folder, _pipeline(source, "stream", ["items", "notes", "kinds"], out))
    with svc:
        source.execute("INSERT INTO items VALUES (1, 'one', 1)")
        source.transaction(
            "INSERT INTO items VALUES (2, 'two', 2)",
            "INSERT INTO notes VALUES (1, 'n1')",
            "UPDATE items SET qty = 11 WHERE id = 1",
            "INSERT INTO notes VALUES (2, 'n2')",
        )
        source.execute(
            "UPDATE items SET qty = 22 WHERE id = 2",
            "UPDATE notes SET body = 'n1 edited' WHERE id = 1",
            "DELETE FROM items WHERE id = 2",
            "DELETE FROM notes WHERE id = 2",
            "UPDATE items SET id = 10, name = 'ten' WHERE id = 1",
            "TRUNCATE TABLE notes",
            f"ALTER TABLE items ADD COLUMN note {source.types['text']}",
            "INSERT INTO items VALUES (3, 'three', 3, 'v2')",
            f"INSERT INTO kinds VALUES {', '.join(KINDS_VALUES)}",
        )
        _wait_events(
            out, svc, lambda ev: len(ev) >= len(EXPECTED_OPS), f"{len(EXPECTED_OPS)} events"
        )
        assert svc.stop() == 0, svc.logs()[-4000:]
    return Streamed(source, read_complete_events(out), read_schemas(out))


def test_changes_arrive_in_commit_order_in_contiguous_transactions(streamed: Streamed) -> None:
    source, events = streamed.source, streamed.events
    assert [(e["source"]["table"], e["op"]) for e in events] == EXPECTED_OPS
    position = None
    seen: set[str] = set()
    current: str | None = None
    seq, closed = -1, True
    for e in events:
        here = source.commit_position(e)
        assert position is None or here >= position, f"commit order broken at {e['id']}"
        position = here
        tx = e["transaction"]
        if tx["id"] != current:
            assert closed, f"transaction {current} has no last event"
            assert tx["id"] not in seen, f"transaction {tx['id']} is not contiguous"
            seen.add(tx["id"])
            current, seq = tx["id"], -1
        assert tx["seq"] == seq + 1, f"seq gap at {e['id']}"
        seq, closed = tx["seq"], tx["last"]
        assert e["source"]["connector"] == source.connector and e["source"]["snapshot"] is False
        assert e["source"]["table"] == e["schema"]["name"].rpartition(".")[2]
    assert closed
    # the multi-table transaction, the key change and the two-row INSERT each share one
    groups = [
        [e["transaction"]["seq"] for e in events if e["transaction"]["id"] == t]
        for t in dict.fromkeys(e["transaction"]["id"] for e in events)
    ]
    assert groups == [[0], [0, 1, 2, 3], [0], [0], [0], [0], [0, 1], [0], [0], [0, 1]]


def test_ids_are_unique_and_in_their_documented_format(streamed: Streamed) -> None:
    ids = [e["id"] for e in streamed.events]
    assert len(set(ids)) == len(ids)
    assert ids == [streamed.source.event_id(e) for e in streamed.events]


def test_key_change_is_a_delete_then_a_create_linked_both_ways(streamed: Streamed) -> None:
    source = streamed.source
    kd, kc = [e for e in streamed.of("items") if "key_change" in e]
    assert (
        kd["transaction"]["id"] == kc["transaction"]["id"]
        and kd["transaction"]["seq"] + 1 == kc["transaction"]["seq"]
    )
    assert (kd["op"], kd["key"], kd["key_change"], kd["after"]) == (
        "d",
        {"id": 1},
        {"to": {"id": 10}},
        None,
    )
    full = {"id": 1, "name": "one", "qty": 11}
    assert kd["before"] == (full if source.sends_full_before(False) else {"id": 1})
    assert (kc["op"], kc["key"], kc["key_change"], kc["before"]) == (
        "c",
        {"id": 10},
        {"from": {"id": 1}},
        None,
    )
    assert kc["after"] == {"id": 10, "name": "ten", "qty": 11}


def test_truncate_is_one_t_event_with_null_key_before_and_after(streamed: Streamed) -> None:
    truncates = [e for e in streamed.events if e["op"] == "t"]
    assert len(truncates) == 1
    t = truncates[0]
    assert (t["key"], t["before"], t["after"]) == (None, None, None)
    assert t["schema"] == {"name": streamed.source.table("notes"), "version": 1}
    assert fold(streamed.events, streamed.source.table("notes")) == {}


def test_before_holds_exactly_what_the_source_sends(streamed: Streamed) -> None:
    source = streamed.source
    items, notes = streamed.of("items"), streamed.of("notes")
    for e in streamed.events:
        if e["op"] in ("c", "r", "t"):
            assert e["before"] is None, e["id"]
    # items: the source's default (DEFAULT replica identity on PostgreSQL)
    update = next(e for e in items if e["op"] == "u" and e["key"] == {"id": 2})
    delete = next(e for e in items if e["op"] == "d" and "key_change" not in e)
    if source.sends_full_before(False):
        assert update["before"] == {"id": 2, "name": "two", "qty": 2}
        assert delete["before"] == {"id": 2, "name": "two", "qty": 22}
    else:
        assert update["before"] is None
        assert delete["before"] == {"id": 2}  # the key only: columns not sent are absent
    assert update["after"] == {"id": 2, "name": "two", "qty": 22} and delete["after"] is None
    # notes: whole old rows (REPLICA IDENTITY FULL on PostgreSQL)
    assert source.sends_full_before(True)
    update = next(e for e in notes if e["op"] == "u")
    delete = next(e for e in notes if e["op"] == "d")
    assert update["before"] == {"id": 1, "body": "n1"} and update["after"] == {
        "id": 1,
        "body": "n1 edited",
    }
    assert delete["before"] == {"id": 2, "body": "n2"} and delete["after"] is None


def test_add_column_makes_version_2_defined_before_its_first_use(streamed: Streamed) -> None:
    source = streamed.source
    items = streamed.of("items")
    assert [e["schema"]["version"] for e in items] == [1] * (len(items) - 1) + [2]
    assert items[-1]["after"] == {"id": 3, "name": "three", "qty": 3, "note": "v2"}
    assert all(e["schema"]["version"] == 1 for e in streamed.of("notes") + streamed.of("kinds"))
    defs = {(d["name"], d["version"]): d for d in streamed.schemas}
    name = source.table("items")
    assert [c["name"] for c in defs[(name, 1)]["columns"]] == ["id", "name", "qty"]
    assert [c["name"] for c in defs[(name, 2)]["columns"]] == ["id", "name", "qty", "note"]
    assert defs[(name, 1)]["key"] == defs[(name, 2)]["key"] == ["id"]
    assert (name, 3) not in defs
    # (that each definition reached the sink before its first event is checked while waiting)


def test_nulls_and_common_types_read_the_same_on_every_source(streamed: Streamed) -> None:
    kinds = streamed.of("kinds")
    assert [e["after"] for e in kinds] == KINDS_AFTER
    assert [e["key"] for e in kinds] == [{"id": 1}, {"id": 2}]
    assert [list(e["after"]) for e in kinds] == [[c for c, _ in KINDS]] * 2  # column order


# -- snapshots ------------------------------------------------------------------------------------


def test_initial_snapshot_then_the_stream_fold_to_the_table(
    source: SourceHarness, tmp_path: Path
) -> None:
    source.create_table("snap", ITEMS, ["id"])
    source.fill("snap", 1, 250)
    out = tmp_path / "out"
    with _start(tmp_path, _pipeline(source, "snap", ["snap"], out, snapshot="initial")) as svc:
        _wait_events(out, svc, lambda ev: len(snapshot_reads(ev)) >= 250, "250 snapshot reads")
        source.execute(
            "UPDATE snap SET qty = qty + 100 WHERE id <= 5",
            "DELETE FROM snap WHERE id = 7",
            "INSERT INTO snap VALUES (1000, 'late', 1)",
        )
        events = _wait_events(
            out,
            svc,
            lambda ev: _folds_to_table(source, "snap", ev),
            "the sink to fold into the table",
        )
        assert svc.stop() == 0, svc.logs()[-4000:]
    reads = snapshot_reads(events)
    assert len(reads) == 250 and len({e["id"] for e in reads}) == 250
    assert sorted(e["key"]["id"] for e in reads) == list(range(1, 251))
    for e in reads:
        assert e["transaction"] is None and e["before"] is None
        assert e["source"]["snapshot"] is True and e["source"]["snapshot_id"]
        assert e["schema"] == {"name": source.table("snap"), "version": 1}
        assert e["after"] == {
            "id": e["key"]["id"],
            "name": f"row {e['key']['id']}",
            "qty": e["key"]["id"] % 7,
        }
    stream = events[events.index(reads[-1]) + 1 :]
    assert [e["op"] for e in stream] == ["u"] * 5 + ["d", "c"]
    assert all(e["source"]["snapshot"] is False and e["transaction"] for e in stream)
    assert len({e["id"] for e in events}) == len(events)


# -- kill -9 and restart ----------------------------------------------------------------------------

BIG = 20_000


def test_kill_9_mid_transaction_then_restart_redelivers_with_the_same_ids(
    source: SourceHarness, tmp_path: Path
) -> None:
    source.create_table("crash", ITEMS, ["id"])
    out = tmp_path / "out"
    pipeline = _pipeline(source, "crash", ["crash"], out)
    svc = _start(tmp_path, pipeline)
    with svc:
        source.fill("crash", 1, 20)
        _wait_events(out, svc, lambda ev: len(ev) >= 20, "the first 20 events")
        size = sum(f.stat().st_size for f in out.glob("events-*.jsonl"))
        # one transaction much larger than a batch: while it is delivered, no checkpoint
        # covers what the sink already holds of it
        source.fill("crash", 1001, 1000 + BIG)
        wait_for(
            lambda: sum(f.stat().st_size for f in out.glob("events-*.jsonl")) > size,
            60,
            interval=0.005,
            what="the big transaction to start landing",
        )
        svc.kill()
    before_kill = read_complete_events(out)
    big = before_kill[20:]
    assert big and not big[-1]["transaction"]["last"], (
        "the whole transaction landed before the kill"
    )
    with _start(tmp_path, pipeline) as svc:
        events = _wait_events(
            out,
            svc,
            lambda ev: _folds_to_table(source, "crash", ev),
            "the sink to fold into the table",
            timeout=90,
        )
        assert svc.stop() == 0, svc.logs()[-4000:]
    events = read_complete_events(out)

    def strip(e: dict[str, Any]) -> bytes:
        return orjson.dumps(
            {k: v for k, v in e.items() if k != "ts_ms"}, option=orjson.OPT_SORT_KEYS
        )

    by_id: dict[str, bytes] = {}
    for e in events:
        assert by_id.setdefault(e["id"], strip(e)) == strip(e), (
            f"{e['id']} delivered twice with different content"
        )
    assert len(by_id) == 20 + BIG  # one id per change: nothing re-delivered under a new id
    for e in before_kill:
        assert by_id.get(e["id"]) == strip(e), f"{e['id']} was not delivered again the same"
    tx = [e for e in events if e["transaction"]["id"] == big[0]["transaction"]["id"]]
    assert len(dedupe(tx)) == BIG and tx[-1]["transaction"]["last"]
