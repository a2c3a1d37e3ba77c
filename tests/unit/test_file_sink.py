"""The file sink on real files: layout, rotation, schemas, resume tokens, torn lines, drop and
I/O errors (a real ENOSPC from /dev/full and a real EFBIG from RLIMIT_FSIZE)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
import structlog
from structlog.testing import capture_logs

from cdc.errors import FatalError, RetriableError
from cdc.events import ChangeEvent
from cdc.plugin import PluginContext
from cdc.schema import Column, SchemaVersion, TableSchema
from sinks.file import FileConfig, FileSink

REPO = Path(__file__).resolve().parents[2]

ORDERS_V1 = SchemaVersion.build(
    TableSchema(
        "public.orders",
        (Column("id", "int4", False), Column("status", "text")),
        ("id",),
    ),
    1,
)
ORDERS_V2 = SchemaVersion.build(
    TableSchema(
        "public.orders",
        (Column("id", "int4", False), Column("status", "text"), Column("total", "numeric(12,2)")),
        ("id",),
    ),
    2,
)
SOURCE: dict[str, Any] = {
    "connector": "postgres",
    "pipeline": "shop",
    "db": "shop",
    "schema": "public",
    "table": "orders",
    "ts_ms": 1764297600100,
    "tx": "7841",
    "lsn": "0/16B37C8",
    "snapshot": False,
}


def event(n: int, schema: SchemaVersion = ORDERS_V1, pad: int = 0) -> ChangeEvent:
    after: dict[str, Any] = {"id": n, "status": "paid" + "x" * pad}
    if schema.version == 2:
        after["total"] = "19.90"
    return ChangeEvent(
        f"pg:0/16B37C8:{n}",
        "c",
        1764297600123,
        SOURCE,
        ("0/16B37C8", n, False),
        schema,
        {"id": n},
        None,
        after,
    )


def make_sink(folder: Path, rotate_mb: float = 128) -> FileSink:
    ctx = PluginContext(
        SimpleNamespace(name="shop"),  # type: ignore[arg-type]
        store=None,  # type: ignore[arg-type]
        log=structlog.get_logger(),
        config_dir=str(folder.parent),
    )
    return FileSink(FileConfig(path=str(folder), rotate_mb=rotate_mb), ctx)


def events_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("events-*.jsonl"))


def all_lines(folder: Path) -> list[bytes]:
    out: list[bytes] = []
    for name in events_files(folder):
        data = (folder / name).read_bytes()
        assert data == b"" or data.endswith(b"\n"), name
        out.extend(data.splitlines())
    return out


def ids(folder: Path) -> list[str]:
    return [orjson.loads(line)["id"] for line in all_lines(folder)]


def schema_lines(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "schemas.jsonl").read_bytes().splitlines()]


# ---------------------------------------------------------------------------- layout


def test_lines_and_order(tmp_path: Path) -> None:
    folder = tmp_path / "out" / "shop"  # created when missing, parents too
    sink = make_sink(folder)
    sink.open(None)
    sink.write_schema(ORDERS_V1)
    batch1 = [event(i) for i in range(5)]
    batch2 = [event(i) for i in range(5, 8)]
    sink.write(batch1)
    sink.write([])
    sink.write(batch2)
    token = sink.flush()
    sink.close()

    assert events_files(folder) == ["events-000001.jsonl"]
    data = (folder / "events-000001.jsonl").read_bytes()
    assert data == b"".join(e.json + b"\n" for e in batch1 + batch2)
    assert token == f"events-000001.jsonl:{len(data)}"
    first = orjson.loads(data.splitlines()[0])
    assert first["schema"] == {"name": "public.orders", "version": 1}
    assert first["source"] == SOURCE
    assert ids(folder) == [f"pg:0/16B37C8:{i}" for i in range(8)]


def test_flush_returns_token_of_current_file_and_reopen_appends(tmp_path: Path) -> None:
    sink = make_sink(tmp_path)
    sink.open(None)
    sink.write_schema(ORDERS_V1)
    sink.write([event(0)])
    t1 = sink.flush()
    sink.close()

    sink = make_sink(tmp_path)
    sink.open(t1)
    sink.write([event(1)])
    t2 = sink.flush()
    sink.close()
    size = (tmp_path / "events-000001.jsonl").stat().st_size
    assert t2 == f"events-000001.jsonl:{size}"
    assert events_files(tmp_path) == ["events-000001.jsonl"]
    assert ids(tmp_path) == ["pg:0/16B37C8:0", "pg:0/16B37C8:1"]


def test_schema_before_first_use_and_not_duplicated_across_reopen(tmp_path: Path) -> None:
    sink = make_sink(tmp_path)
    sink.open(None)
    sink.write_schema(ORDERS_V1)
    # handed to the OS at once: a reader sees it before any event using it is written
    assert schema_lines(tmp_path) == [ORDERS_V1.definition]
    sink.write([event(0)])
    sink.write_schema(ORDERS_V1)  # again in the same session: skipped
    token = sink.flush()
    sink.close()

    sink = make_sink(tmp_path)
    sink.open(token)
    sink.write_schema(ORDERS_V1)  # already in the file: skipped
    sink.write_schema(ORDERS_V2)
    sink.write([event(1, ORDERS_V2)])
    sink.flush()
    sink.close()

    assert schema_lines(tmp_path) == [ORDERS_V1.definition, ORDERS_V2.definition]
    assert make_sink(tmp_path).held_schemas() == [ORDERS_V1.definition, ORDERS_V2.definition]


# ---------------------------------------------------------------------------- rotation


def test_rotation_keeps_order_and_never_splits_an_event(tmp_path: Path) -> None:
    rotate_mb = 0.001  # 1048 bytes
    limit = int(rotate_mb * 1024 * 1024)
    sink = make_sink(tmp_path, rotate_mb=rotate_mb)
    sink.open(None)
    sink.write_schema(ORDERS_V1)
    sent = [event(i, pad=i % 7 * 10) for i in range(40)]
    for start in range(0, 40, 6):  # several batches, rotations inside a batch and between
        sink.write(sent[start : start + 6])
    token = sink.flush()
    sink.close()

    names = events_files(tmp_path)
    assert len(names) > 5
    assert names == [f"events-{i:06d}.jsonl" for i in range(1, len(names) + 1)]
    assert token == f"{names[-1]}:{(tmp_path / names[-1]).stat().st_size}"
    for name in names:
        data = (tmp_path / name).read_bytes()
        assert data.endswith(b"\n")
        assert len(data) <= limit
        for line in data.splitlines():
            orjson.loads(line)  # every line a whole event
    assert all_lines(tmp_path) == [e.json for e in sent]


def test_event_larger_than_the_limit_gets_its_own_file(tmp_path: Path) -> None:
    sink = make_sink(tmp_path, rotate_mb=0.001)
    sink.open(None)
    small1, big, small2 = event(1), event(2, pad=3000), event(3)
    sink.write([small1, big, small2])
    sink.flush()
    sink.close()
    files = [(tmp_path / n).read_bytes() for n in events_files(tmp_path)]
    assert files == [small1.json + b"\n", big.json + b"\n", small2.json + b"\n"]


def test_rotation_files_sort_in_delivery_order_across_reopen(tmp_path: Path) -> None:
    sink = make_sink(tmp_path, rotate_mb=0.001)
    sink.open(None)
    sink.write([event(i, pad=200) for i in range(6)])
    token = sink.flush()
    sink.close()
    before = events_files(tmp_path)
    sink = make_sink(tmp_path, rotate_mb=0.001)
    sink.open(token)
    sink.write([event(i, pad=200) for i in range(6, 12)])
    sink.flush()
    sink.close()
    after = events_files(tmp_path)
    assert after[: len(before)] == before and len(after) > len(before)
    assert ids(tmp_path) == [f"pg:0/16B37C8:{i}" for i in range(12)]


# ---------------------------------------------------------------------------- recovery


def test_resume_token_truncates_and_removes_later_files(tmp_path: Path) -> None:
    sink = make_sink(tmp_path, rotate_mb=0.002)
    sink.open(None)
    sink.write_schema(ORDERS_V1)
    sink.write([event(i) for i in range(3)])
    token = sink.flush()
    # past the checkpoint: enough to rotate twice, never flushed by the pipeline...
    sink.write([event(i, pad=300) for i in range(3, 12)])
    sink.close()  # ...but close() hands the buffers to the OS, the worst case after a crash
    assert len(events_files(tmp_path)) >= 3

    sink = make_sink(tmp_path, rotate_mb=0.002)
    sink.open(token)
    assert events_files(tmp_path) == ["events-000001.jsonl"]
    assert ids(tmp_path) == [f"pg:0/16B37C8:{i}" for i in range(3)]
    assert token == f"events-000001.jsonl:{(tmp_path / 'events-000001.jsonl').stat().st_size}"
    # the replay appends right after the checkpoint: no duplicates
    sink.write([event(i) for i in range(3, 5)])
    sink.flush()
    sink.close()
    assert ids(tmp_path) == [f"pg:0/16B37C8:{i}" for i in range(5)]


def test_torn_last_line_is_cut_without_token(tmp_path: Path) -> None:
    sink = make_sink(tmp_path)
    sink.open(None)
    sink.write_schema(ORDERS_V1)
    sink.write([event(0), event(1)])
    sink.flush()
    sink.close()
    with open(tmp_path / "events-000001.jsonl", "ab") as f:
        f.write(event(2).json[:25])  # a crash in the middle of a line
    with open(tmp_path / "schemas.jsonl", "ab") as f:
        f.write(orjson.dumps(ORDERS_V2.definition)[:10])

    assert make_sink(tmp_path).held_schemas() == [ORDERS_V1.definition]  # torn line ignored
    sink = make_sink(tmp_path)
    with capture_logs() as logs:
        sink = make_sink(tmp_path)
        sink.open(None)
    assert any(log["event"] == "file_sink_cut_torn_line" for log in logs)
    sink.write_schema(ORDERS_V2)
    sink.write([event(2)])
    sink.flush()
    sink.close()
    assert ids(tmp_path) == ["pg:0/16B37C8:0", "pg:0/16B37C8:1", "pg:0/16B37C8:2"]
    assert schema_lines(tmp_path) == [ORDERS_V1.definition, ORDERS_V2.definition]


def test_torn_line_without_any_newline_empties_the_file(tmp_path: Path) -> None:
    tmp_path.joinpath("events-000001.jsonl").write_bytes(b'{"id": "pg:0/1:0", "op"')
    sink = make_sink(tmp_path)
    sink.open(None)
    sink.close()
    assert tmp_path.joinpath("events-000001.jsonl").read_bytes() == b""


def test_token_naming_a_missing_file_warns_and_cuts_torn_line(tmp_path: Path) -> None:
    sink = make_sink(tmp_path)
    sink.open(None)
    sink.write([event(0)])
    sink.flush()
    sink.close()
    with open(tmp_path / "events-000001.jsonl", "ab") as f:
        f.write(b'{"id":"torn')
    with capture_logs() as logs:
        sink = make_sink(tmp_path)
        sink.open("events-000007.jsonl:123")
    sink.close()
    assert any(log["log_level"] == "warning" and "missing file" in log["message"] for log in logs), (
        logs
    )
    assert ids(tmp_path) == ["pg:0/16B37C8:0"]


def test_invalid_token_warns_and_falls_back(tmp_path: Path) -> None:
    with capture_logs() as logs:
        sink = make_sink(tmp_path)
        sink.open("not a token")
    sink.close()
    assert any(log["log_level"] == "warning" for log in logs)
    assert events_files(tmp_path) == ["events-000001.jsonl"]


# ---------------------------------------------------------------------------- facts and drop


def test_holds_events_and_held_schemas(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    probe = make_sink(folder)
    assert probe.holds_events() is False  # folder missing
    assert probe.held_schemas() == []

    sink = make_sink(folder)
    sink.open(None)
    assert probe.holds_events() is False  # an empty events file holds nothing
    sink.write_schema(ORDERS_V1)
    sink.write_schema(ORDERS_V2)
    sink.write([event(0)])
    sink.flush()
    assert probe.holds_events() is True
    assert sink.held_schemas() == [ORDERS_V1.definition, ORDERS_V2.definition]
    sink.close()
    assert probe.held_schemas() == [ORDERS_V1.definition, ORDERS_V2.definition]


def test_drop_moves_files_and_a_new_sink_holds_nothing(tmp_path: Path) -> None:
    sink = make_sink(tmp_path, rotate_mb=0.001)
    assert sink.describe_drop() == [] and sink.drop() == []  # nothing yet, no open needed
    sink.open(None)
    sink.write_schema(ORDERS_V1)
    sink.write([event(i, pad=300) for i in range(6)])
    sink.flush()
    sink.close()
    names = events_files(tmp_path)
    contents = {n: (tmp_path / n).read_bytes() for n in names + ["schemas.jsonl"]}
    assert len(names) >= 2

    fresh = make_sink(tmp_path)  # as `cdc drop` does: a new instance, never opened
    plan = fresh.describe_drop()
    assert len(plan) == 1
    assert plan[0].startswith(f"move {len(names)} event files (")
    assert "schemas.jsonl" in plan[0] and str(tmp_path) in plan[0] and "dropped-" in plan[0]
    assert events_files(tmp_path) == names  # describing moves nothing

    done = fresh.drop()
    assert len(done) == 1 and done[0].startswith(f"moved {len(names)} event files")
    dropped = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(dropped) == 1 and dropped[0].name.startswith("dropped-")
    assert len(dropped[0].name) == len("dropped-20261128T134501Z")
    assert dropped[0].name in done[0]
    assert {p.name: p.read_bytes() for p in dropped[0].iterdir()} == contents
    assert events_files(tmp_path) == [] and not (tmp_path / "schemas.jsonl").exists()

    again = make_sink(tmp_path)
    assert again.holds_events() is False and again.held_schemas() == []
    again.open(None)
    again.write_schema(ORDERS_V1)  # a fresh start writes the schema again
    again.write([event(0)])
    again.flush()
    again.close()
    assert events_files(tmp_path) == ["events-000001.jsonl"]
    assert schema_lines(tmp_path) == [ORDERS_V1.definition]

    # a second drop in the same second gets its own folder
    assert len(make_sink(tmp_path).drop()) == 1
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 2


# ---------------------------------------------------------------------------- errors


def test_path_that_is_a_file_is_fatal(tmp_path: Path) -> None:
    target = tmp_path / "not-a-folder"
    target.write_text("x")
    sink = make_sink(target)
    with pytest.raises(FatalError, match="not a folder"):
        sink.open(None)
    with pytest.raises(FatalError, match="not a folder"):
        sink.holds_events()
    sink.close()  # never raises


def test_folder_that_cannot_be_created_is_fatal(tmp_path: Path) -> None:
    # A place where even root cannot create a folder: sysfs refuses it (EPERM).
    sink = make_sink(Path("/sys/cdc-out"))
    with pytest.raises(FatalError, match="cannot|denied|not permitted|No such"):
        sink.open(None)
    sink.close()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_enospc_on_flush_and_write_is_retriable(tmp_path: Path) -> None:
    # The events file is a real device that answers every write with ENOSPC.
    os.symlink("/dev/full", tmp_path / "events-000001.jsonl")
    sink = make_sink(tmp_path)
    sink.open(None)
    sink.write([event(0)])  # buffered: fine until flushed
    with pytest.raises(RetriableError) as err:
        sink.flush()
    assert err.value.kind == "sink_io"
    assert "events-000001.jsonl" in str(err.value)
    assert "No space left on device" in str(err.value)
    sink.close()  # the buffered bytes cannot be written; close still does not raise

    sink = make_sink(tmp_path)
    sink.open(None)
    with pytest.raises(RetriableError) as err:
        sink.write([event(1, pad=2 << 20)])  # larger than the buffer: written at once
    assert err.value.kind == "sink_io"
    sink.close()


def test_file_size_limit_is_retriable_and_reopen_truncates(tmp_path: Path) -> None:
    # A real EFBIG: a child process with RLIMIT_FSIZE writes past it.
    script = textwrap.dedent(
        """
        import resource, signal, sys
        from pathlib import Path
        from tests.unit.test_file_sink import event, make_sink, ORDERS_V1
        from cdc.errors import RetriableError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        sink = make_sink(Path(sys.argv[1]))
        sink.open(None)
        sink.write_schema(ORDERS_V1)
        sink.write([event(i) for i in range(3)])
        print("TOKEN", sink.flush(), flush=True)
        try:
            sink.write([event(i, pad=100) for i in range(3, 100)])
            sink.flush()
        except RetriableError as e:
            print("FAILURE", e.kind, "|", e, flush=True)
        sink.close()
        """
    )
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    found: dict[str, str] = {}
    for line in result.stdout.splitlines():  # other lines are the sink's own log output
        tag, _, rest = line.partition(" ")
        if tag in ("TOKEN", "FAILURE"):
            found[tag] = rest
    token, failure = found["TOKEN"], found["FAILURE"]
    assert failure.startswith("sink_io | file sink: cannot")
    assert "File too large" in failure and "events-000001.jsonl" in failure
    assert (tmp_path / "events-000001.jsonl").stat().st_size == 4096  # partly written

    sink = make_sink(tmp_path)
    sink.open(token)  # what the pipeline does after the RetriableError
    sink.close()
    assert ids(tmp_path) == [f"pg:0/16B37C8:{i}" for i in range(3)]


def test_close_without_open_and_twice(tmp_path: Path) -> None:
    sink = make_sink(tmp_path)
    sink.close()
    sink.open(None)
    sink.close()
    sink.close()
    with pytest.raises(RetriableError):
        sink.write([event(0)])
