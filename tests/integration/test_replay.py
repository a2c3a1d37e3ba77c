"""`cdc replay` (contract section 12): a file sink's folder, written by a real pipeline from
PostgreSQL 15, replayed into a webhook receiver, into Kafka on the test broker and into the
postgres sink. Selection by --since/--until and --after-id, each id once and in archive order,
JSON byte-identical to the archived lines, a replay killed mid-way continues without
duplicates beyond the sink's guarantee, a finished replay is a no-op, the source pipeline's
checkpoint and slot untouched, and bad archives and arguments refused."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from cdc_local.postgres import free_port
from tests.helpers import (
    ROOT,
    CdcService,
    cdc_env,
    create_database,
    drop_database,
    execute,
    pg_pipeline,
    run_cli,
    slot_row,
    wait_for,
    write_config,
)
from tests.kafka_harness import KafkaHarness
from tests.webhook_harness import Receiver

TABLE = "public.orders"
TRANSACTIONS = 120


class Archived:
    """The source database, the archive folder and its lines."""

    def __init__(self, dsn: str, folder: Path, state: Path) -> None:
        self.dsn, self.folder, self.state = dsn, folder, state
        self.lines: list[bytes] = []
        for name in sorted(os.listdir(folder)):
            if name.startswith("events-"):
                self.lines += [line for line in (folder / name).read_bytes().split(b"\n") if line]
        self.events = [orjson.loads(line) for line in self.lines]
        self.by_id = dict(zip((e["id"] for e in self.events), self.lines, strict=True))


@pytest.fixture(scope="module")
def archive(pg15: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archived]:
    name, dsn = create_database(pg15)
    tmp = tmp_path_factory.mktemp("archive")
    execute(dsn, f"CREATE TABLE {TABLE} (id int PRIMARY KEY, status text, total numeric(10,2), "
                 "doc jsonb, f float8)")
    p = pg_pipeline("shop", dsn, [TABLE], tmp / "archive")
    p["sink"]["rotate_mb"] = 0.01  # ~10 KB files: several of them
    cfg = write_config(tmp, [p], api_port=free_port())
    with CdcService(cfg) as svc:
        svc.wait_state("shop", "running")
        with psycopg.connect(dsn) as conn:
            for i in range(1, TRANSACTIONS + 1):
                conn.execute(f"INSERT INTO {TABLE} VALUES (%s, 'new', 19.90, %s, %s)",
                             (i, '{"a": 1.10, "b": [1, 2], "s": "x y"}', i / 3))
                if i > 1:
                    conn.execute(f"UPDATE {TABLE} SET status = 'paid' WHERE id = %s", (i - 1,))
                if i % 40 == 0:
                    conn.execute(f"DELETE FROM {TABLE} WHERE id = %s", (i - 2,))
                conn.commit()
        want = TRANSACTIONS * 2 - 1 + TRANSACTIONS // 40

        def delivered() -> bool:
            folder = tmp / "archive"
            return sum(f.read_bytes().count(b"\n") for f in folder.glob("events-*.jsonl")) >= want

        wait_for(delivered, 60, what="the archive holds every change")
        assert svc.stop() == 0
    got = Archived(dsn, tmp / "archive", tmp / "state.sqlite")
    assert len(got.events) == want and len(list((tmp / "archive").glob("events-*.jsonl"))) >= 3
    yield got
    drop_database(pg15, name)


def _target_config(tmp_path: Path, archive: Archived, sink: dict[str, Any], **extra: Any) -> Path:
    p = pg_pipeline("hooks", archive.dsn, [TABLE], tmp_path / "unused", slot="cdc_hooks_never")
    p["sink"] = sink
    p.update(extra)
    return write_config(tmp_path, [p], api_port=free_port())


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _replay(cfg: Path, archive: Archived, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("replay", str(cfg), "--archive", str(archive.folder), "--to", "hooks", *args, timeout=120)


def _posted(receiver: Receiver) -> list[tuple[dict[str, Any], bytes]]:
    """Each delivered event with its raw JSON text as it was inside the request body."""
    out: list[tuple[dict[str, Any], bytes]] = []
    for r in receiver.delivered():
        body = r.body
        start = body.index(b'"events":[') + len(b'"events":[')
        events = r.events
        # the body is compact JSON: the events are the archived lines joined by commas
        raw = body[start:]
        for e in events:
            end = _value_end(raw)
            out.append((e, raw[:end]))
            raw = raw[end + 1:]
    return out


def _value_end(raw: bytes) -> int:
    """The length of the JSON object at the start of ``raw``."""
    depth = 0
    i = 0
    in_str = False
    while True:
        c = raw[i]
        if in_str:
            if c == 0x5C:  # backslash
                i += 2
                continue
            if c == 0x22:
                in_str = False
        elif c == 0x22:
            in_str = True
        elif c in (0x7B, 0x5B):
            depth += 1
        elif c in (0x7D, 0x5D):
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1


# -- webhook ------------------------------------------------------------------------------------


def test_replay_into_a_webhook_selects_by_time_in_order_byte_identical(
    archive: Archived, tmp_path: Path
) -> None:
    receiver = Receiver()
    try:
        cfg = _target_config(tmp_path, archive, {"type": "webhook", "url": receiver.url, "batch_max": 50})
        ts = [e["source"]["ts_ms"] for e in archive.events]
        since, until = ts[len(ts) // 4], ts[3 * len(ts) // 4]
        want = [e["id"] for e in archive.events if since <= e["source"]["ts_ms"] <= until]
        assert 0 < len(want) < len(archive.events)
        proc = _replay(cfg, archive, "--since", _iso(since), "--until", _iso(until))
        assert proc.returncode == 0, proc.stderr
        assert f"replayed {len(want):,} events" in proc.stdout
        posted = _posted(receiver)
        assert [e["id"] for e, _ in posted] == want  # each once, in archive order
        for e, raw in posted:
            assert raw == archive.by_id[e["id"]]  # the archived bytes, unchanged
        # the schema versions came along, and the pipeline named is the target's
        first = receiver.delivered()[0].doc
        assert first is not None and first["pipeline"] == "hooks"
        assert "public.orders@1" in first["schemas"]
        # a finished replay run again does nothing and says so
        before = len(receiver.requests)
        again = _replay(cfg, archive, "--since", _iso(since), "--until", _iso(until))
        assert again.returncode == 0 and "already finished" in again.stdout, again.stdout
        assert len(receiver.requests) == before
        # another selection is another replay: after an id
        after = archive.events[-10]["id"]
        proc = _replay(cfg, archive, "--after-id", after)
        assert proc.returncode == 0, proc.stderr
        assert [e["id"] for e, _ in _posted(receiver)][len(want):] == [e["id"] for e in archive.events[-9:]]
    finally:
        receiver.close()


def test_a_killed_replay_continues_without_duplicates(archive: Archived, tmp_path: Path) -> None:
    receiver = Receiver()
    try:
        cfg = _target_config(tmp_path, archive, {"type": "webhook", "url": receiver.url, "batch_max": 500})
        env = cdc_env()
        env["CDC_TEST_REPLAY_BATCH_DELAY_S"] = "0.5"
        env["CDC_TEST_REPLAY_BATCH"] = "20"
        proc = subprocess.Popen(
            [sys.executable, "-m", "cdc", "replay", str(cfg), "--archive", str(archive.folder), "--to", "hooks"],
            env=env, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        try:
            wait_for(lambda: len(receiver.delivered()) >= 3, 60, what="3 batches delivered")
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
        first_run = [e["id"] for e, _ in _posted(receiver)]
        assert 0 < len(first_run) < len(archive.events)
        done = _replay(cfg, archive)
        assert done.returncode == 0, done.stderr
        assert "continuing the replay" in done.stderr
        ids = [e["id"] for e, _ in _posted(receiver)]
        want = [e["id"] for e in archive.events]
        # every event arrived, in order; only the batch in flight at the kill (delivered but not
        # yet saved) may arrive twice: at-least-once, the webhook sink's guarantee
        assert list(dict.fromkeys(ids)) == want
        assert len(ids) - len(want) <= 20
    finally:
        receiver.close()


def test_the_source_pipeline_is_untouched(archive: Archived, tmp_path: Path) -> None:
    with sqlite3.connect(archive.state) as db:
        before = db.execute("SELECT * FROM checkpoints").fetchall()
    slot = slot_row(archive.dsn, "cdc_shop")
    receiver = Receiver()
    try:
        # the replay's state lives in the archive pipeline's own store here, on purpose
        cfg = _target_config(tmp_path, archive, {"type": "webhook", "url": receiver.url})
        text = cfg.read_text().replace(str(tmp_path / "state.sqlite"), str(archive.state))
        cfg.write_text(text)
        proc = _replay(cfg, archive)
        assert proc.returncode == 0, proc.stderr
    finally:
        receiver.close()
    with sqlite3.connect(archive.state) as db:
        assert db.execute("SELECT * FROM checkpoints").fetchall() == before
        metas = db.execute("SELECT pipeline, key FROM meta WHERE key LIKE 'replay:%'").fetchall()
    assert metas and all(p == "" for p, _ in metas)
    assert slot_row(archive.dsn, "cdc_shop") == slot
    assert "" not in run_cli("status", str(cfg)).stdout.split()


# -- kafka ------------------------------------------------------------------------------------------


def test_replay_into_kafka(archive: Archived, tmp_path: Path) -> None:
    kafka = KafkaHarness(tmp_path)
    cfg = _target_config(tmp_path, archive, kafka.sink_config())
    after = archive.events[99]["id"]
    proc = _replay(cfg, archive, "--after-id", after)
    assert proc.returncode == 0, proc.stderr
    records = kafka.records()
    want = archive.events[100:]
    assert sorted(r.headers["cdc-id"].decode() for r in records if r.value is not None) == sorted(e["id"] for e in want)
    for r in records:
        if r.value is not None:
            assert r.value == archive.by_id[r.headers["cdc-id"].decode()]
            assert r.key == orjson.dumps(orjson.loads(r.value)["key"])
    # per partition, in archive order
    order = {e["id"]: i for i, e in enumerate(archive.events)}
    for part in {r.partition for r in records}:
        seq = [order[r.headers["cdc-id"].decode()] for r in records if r.partition == part and r.value is not None]
        assert seq == sorted(seq)
    assert kafka.schemas() and kafka.schemas()[0]["name"] == TABLE


# -- postgres sink ----------------------------------------------------------------------------------


def test_replay_into_the_postgres_sink_rebuilds_the_read_model(
    archive: Archived, tmp_path: Path, pg15: Any
) -> None:
    name, model = create_database(pg15)
    try:
        cfg = _target_config(tmp_path, archive, {"type": "postgres", "dsn": model})
        proc = _replay(cfg, archive)
        assert proc.returncode == 0, proc.stderr
        with psycopg.connect(archive.dsn) as a, psycopg.connect(model) as b:
            src = a.execute(f"SELECT id, status, total::text, doc::text, f FROM {TABLE} ORDER BY id").fetchall()
            dst = b.execute(f"SELECT id, status, total::text, doc::text, f FROM {TABLE} ORDER BY id").fetchall()
            rows = b.execute("SELECT pipeline FROM public.cdc_sink_positions").fetchall()
        assert dst == src
        # the replay keeps its own position row, never the pipeline's
        assert [r[0] for r in rows] != ["hooks"] and all(r[0].startswith("hooks:replay:") for r in rows)
        again = _replay(cfg, archive)
        assert again.returncode == 0 and "already finished" in again.stdout
    finally:
        drop_database(pg15, name)


# -- bad input --------------------------------------------------------------------------------------


def test_bad_archives_and_arguments_are_refused(archive: Archived, tmp_path: Path) -> None:
    receiver = Receiver()
    try:
        cfg = _target_config(tmp_path, archive, {"type": "webhook", "url": receiver.url})
        bad = tmp_path / "bad"
        shutil.copytree(archive.folder, bad)
        last = sorted(bad.glob("events-*.jsonl"))[-1]

        def replay(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
            return run_cli("replay", str(cfg), "--archive", str(folder), "--to", "hooks", *args)

        with last.open("ab") as fh:
            fh.write(b'{"id":"torn","op":"c"')
        proc = replay(bad)
        assert proc.returncode == 2 and "torn" in proc.stderr, proc.stderr
        last.write_bytes(last.read_bytes().rsplit(b"\n", 1)[0] + b"\n")
        (bad / "schemas.jsonl").rename(bad / "schemas.saved")
        proc = replay(bad)
        assert proc.returncode == 2 and "schemas.jsonl is missing" in proc.stderr, proc.stderr
        (bad / "schemas.saved").rename(bad / "schemas.jsonl")
        other = archive.lines[0].replace(b'"pipeline":"shop"', b'"pipeline":"other"')
        with last.open("ab") as fh:
            fh.write(other + b"\n")
        proc = replay(bad)
        assert proc.returncode == 2 and "pipeline 'other'" in proc.stderr, proc.stderr
        proc = replay(archive.folder, "--since", "2999-01-01T00:00:00Z")
        assert proc.returncode == 2 and "future" in proc.stderr
        proc = replay(archive.folder, "--since", "2026-02-01T00:00:00Z", "--until", "2026-01-01T00:00:00Z")
        assert proc.returncode == 2 and "after --until" in proc.stderr
        proc = replay(archive.folder, "--after-id", "pg:nope")
        assert proc.returncode == 2 and "no event with that id" in proc.stderr
        proc = run_cli("replay", str(cfg), "--archive", str(archive.folder), "--to", "nosuch")
        assert proc.returncode == 2 and "nosuch" in proc.stderr
        assert receiver.requests == []  # nothing was delivered by any of them
    finally:
        receiver.close()


# -- transforms -------------------------------------------------------------------------------------


def test_the_target_transforms_apply_and_nothing_else_changes(archive: Archived, tmp_path: Path) -> None:
    receiver = Receiver()
    try:
        cfg = _target_config(
            tmp_path, archive, {"type": "webhook", "url": receiver.url},
            transforms=[
                {"filter": {"when": 'op == "c"'}},
                {"mask": {"key": "mask-key-0123456789", "columns": {TABLE: {"status": "redact"}}}},
            ],
        )
        proc = _replay(cfg, archive)
        assert proc.returncode == 0, proc.stderr
        posted = _posted(receiver)
        want = [e for e in archive.events if e["op"] == "c"]
        assert [e["id"] for e, _ in posted] == [e["id"] for e in want]
        for (got, raw), orig in zip(posted, want, strict=True):
            assert got["after"]["status"] != orig["after"]["status"]  # masked
            assert {k: v for k, v in got["after"].items() if k != "status"} == {
                k: v for k, v in orig["after"].items() if k != "status"}
            assert {k: v for k, v in got.items() if k not in ("after", "schema")} == {
                k: v for k, v in orig.items() if k not in ("after", "schema")}
            # the JSON column keeps its exact text (1.10, not 1.1) through a transform
            assert b'"doc":{"a": 1.10, "b": [1, 2], "s": "x y"}' in raw
        doc = receiver.delivered()[0].doc
        assert doc is not None
        (definition,) = doc["schemas"].values()
        assert any(c.get("masked") == "redact" for c in definition["columns"])
    finally:
        receiver.close()


# -- file sink --------------------------------------------------------------------------------------


def test_replay_into_a_file_sink_killed_and_continued_holds_each_line_once(
    archive: Archived, tmp_path: Path
) -> None:
    rebuilt = tmp_path / "rebuilt"
    cfg = _target_config(tmp_path, archive, {"type": "file", "path": str(rebuilt), "rotate_mb": 0.02})
    env = cdc_env()
    env["CDC_TEST_REPLAY_BATCH_DELAY_S"] = "0.3"
    env["CDC_TEST_REPLAY_BATCH"] = "15"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdc", "replay", str(cfg), "--archive", str(archive.folder), "--to", "hooks"],
        env=env, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )

    def lines() -> list[bytes]:
        out: list[bytes] = []
        for f in sorted(rebuilt.glob("events-*.jsonl")):
            out += [line for line in f.read_bytes().split(b"\n") if line]
        return out

    try:
        wait_for(lambda: rebuilt.exists() and len(lines()) >= 45, 60, what="3 batches written")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(lines()) < len(archive.lines)
    done = _replay(cfg, archive)
    assert done.returncode == 0, done.stderr
    # the file sink's own guarantee: the folder is cut back to the last saved batch, so each
    # archived line is there exactly once, byte for byte, in order
    assert lines() == archive.lines
    assert (rebuilt / "schemas.jsonl").read_bytes() == (archive.folder / "schemas.jsonl").read_bytes()


def test_a_file_sink_a_pipeline_writes_to_is_refused(archive: Archived, tmp_path: Path) -> None:
    p = pg_pipeline("shop", archive.dsn, [TABLE], archive.folder)
    cfg = write_config(tmp_path, [p], api_port=free_port(), extra={"state": {"path": str(archive.state)}})
    proc = run_cli("replay", str(cfg), "--archive", str(archive.folder), "--to", "shop")
    assert proc.returncode == 2 and "the archive itself" in proc.stderr, proc.stderr


# -- while the service runs -------------------------------------------------------------------------


def test_replay_while_the_service_runs_and_writes_the_archive(pg15: Any, tmp_path: Path) -> None:
    name, dsn = create_database(pg15)
    receiver = Receiver()
    try:
        execute(dsn, f"CREATE TABLE {TABLE} (id int PRIMARY KEY, status text, total numeric(10,2), "
                     "doc jsonb, f float8)")
        folder = tmp_path / "archive"
        shop = pg_pipeline("shop", dsn, [TABLE], folder, slot="cdc_shop_live")
        hooks = pg_pipeline("hooks", dsn, [TABLE], tmp_path / "unused", slot="cdc_hooks_never")
        hooks["sink"] = {"type": "webhook", "url": receiver.url, "batch_max": 50}
        cfg = write_config(tmp_path, [shop, hooks], api_port=free_port())
        with CdcService(cfg, "--pipeline", "shop") as svc:
            svc.wait_state("shop", "running")
            with psycopg.connect(dsn, autocommit=True) as conn:
                for i in range(1, 201):
                    conn.execute(f"INSERT INTO {TABLE} VALUES (%s, 'new', 1, NULL, 0)", (i,))
                wait_for(lambda: sum(f.read_bytes().count(b"\n") for f in folder.glob("events-*.jsonl")) >= 200,
                         60, what="200 events archived")
                env = cdc_env()
                env["CDC_TEST_REPLAY_BATCH"] = "25"
                replay = subprocess.Popen(
                    [sys.executable, "-m", "cdc", "replay", str(cfg), "--archive", str(folder), "--to", "hooks"],
                    env=env, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                )
                for i in range(201, 401):  # the pipeline keeps writing the archive meanwhile
                    conn.execute(f"INSERT INTO {TABLE} VALUES (%s, 'new', 1, NULL, 0)", (i,))
                out, err = replay.communicate(timeout=120)
                assert replay.returncode == 0, err
            wait_for(lambda: sum(f.read_bytes().count(b"\n") for f in folder.glob("events-*.jsonl")) >= 400,
                     60, what="400 events archived")
            assert svc.pipeline("shop")["state"] == "running"
            assert svc.stop() == 0
        archived = [orjson.loads(line)["id"] for f in sorted(folder.glob("events-*.jsonl"))
                    for line in f.read_bytes().split(b"\n") if line]
        ids = [e["id"] for e, _ in _posted(receiver)]
        # the archive as it was when the replay began: a prefix of it, in order, each id once
        assert len(ids) >= 200 and ids == archived[: len(ids)]
    finally:
        receiver.close()
        drop_database(pg15, name)


def test_replay_into_a_debezium_format_sink(archive: Archived, tmp_path: Path) -> None:
    rebuilt = tmp_path / "dbz"
    cfg = _target_config(tmp_path, archive, {"type": "file", "path": str(rebuilt), "format": "debezium",
                                             "debezium": {"topic.prefix": "shop"}})
    proc = _replay(cfg, archive)
    assert proc.returncode == 0, proc.stderr
    records = [orjson.loads(line) for f in sorted(rebuilt.glob("events-*.jsonl"))
               for line in f.read_bytes().split(b"\n") if line]
    assert len(records) == len(archive.events)
    for record, e in zip(records, archive.events, strict=True):
        payload = record.get("payload", record)
        assert payload["op"] == e["op"]
        assert payload["source"]["txId"] == int(e["source"]["tx"])
        assert (payload["after"] or {}).get("id") == (e["after"] or {}).get("id")


def test_progress_bar_on_a_terminal_and_a_plain_line_otherwise(archive: Archived, tmp_path: Path) -> None:
    import pty

    receiver = Receiver()
    try:
        cfg = _target_config(tmp_path, archive, {"type": "webhook", "url": receiver.url})
        primary, secondary = pty.openpty()
        proc = subprocess.Popen(
            [sys.executable, "-m", "cdc", "replay", str(cfg), "--archive", str(archive.folder), "--to", "hooks"],
            env=cdc_env(), cwd=str(ROOT), stdout=subprocess.PIPE, stderr=secondary,
        )
        os.close(secondary)
        seen = b""
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # the other end closed
                break
            if not chunk:
                break
            seen += chunk
        proc.wait(60)
        os.close(primary)
        assert proc.returncode == 0
        n = len(archive.events)
        assert f"\rreplay [{'#' * 30}] {n:,}/{n:,} events (100%)".encode() in seen, seen[-300:]
        # not a terminal: a plain line
        again = _replay(cfg, archive, "--after-id", archive.events[0]["id"])
        assert again.returncode == 0
        assert f"replay: {n - 1:,} of {n - 1:,} events delivered (100%)" in again.stderr
    finally:
        receiver.close()


# -- the other brokers ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["nats", "redis", "rabbitmq"])
def test_replay_into_the_other_brokers(archive: Archived, tmp_path: Path, kind: str) -> None:
    harness: Any
    if kind == "nats":
        from tests.nats_harness import NatsHarness

        harness = NatsHarness(tmp_path)
    elif kind == "redis":
        from tests.redis_harness import RedisHarness

        harness = RedisHarness(tmp_path)
    else:
        from tests.rabbitmq_harness import RabbitHarness

        harness = RabbitHarness(tmp_path)
    try:
        cfg = _target_config(tmp_path, archive, harness.sink_config())
        proc = _replay(cfg, archive, "--after-id", archive.events[49]["id"])
        assert proc.returncode == 0, proc.stderr
        want = archive.events[50:]
        got = wait_for(lambda: (lambda ev: ev if len(ev) >= len(want) else None)(harness.events()), 60,
                       what="every replayed event at the broker")
        assert [e["id"] for e in got] == [e["id"] for e in want]
        assert got == want
    finally:
        harness.close()
