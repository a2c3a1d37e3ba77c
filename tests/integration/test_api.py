"""The admin HTTP API (contract section 8) of a real service streaming from PostgreSQL 15:
probes, /metrics, /pipelines, the bearer token, and retained-WAL readiness."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cdc_local.postgres import LocalPostgres
from cdc_local.postgres import free_port as pick_port
from tests.helpers import (
    CdcService,
    create_database,
    drop_database,
    execute,
    find_log,
    metric_value,
    pg_pipeline,
    read_events,
    run_cli,
    wait_for,
    write_config,
)

PG15 = pytest.mark.parametrize("pg", ["pg15"], indirect=True)
TOKEN = "api-test-token-9f3b"


class _Api:
    def __init__(self, svc: CdcService, dsn: str, out: Path, unused_slot: str) -> None:
        self.svc = svc
        self.dsn = dsn
        self.out = out
        self.unused_slot = unused_slot


@pytest.fixture(scope="module")
def api(pg15: LocalPostgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Api]:
    """One service with a token, streaming public.items of a fresh database; an unused
    ``cdc_*`` slot exists in that database before it starts."""
    folder = tmp_path_factory.mktemp("api")
    name, dsn = create_database(pg15)
    unused = f"cdc_unused_{uuid.uuid4().hex[:8]}"
    try:
        execute(
            dsn,
            "CREATE TABLE items (id int PRIMARY KEY, name text)",
            f"SELECT pg_create_logical_replication_slot('{unused}', 'pgoutput')",
        )
        out = folder / "out"
        cfg = write_config(
            folder,
            [pg_pipeline("api", dsn, ["public.items"], out)],
            api_port=pick_port(),
            extra={"api": {"token": TOKEN}},
        )
        with CdcService(cfg) as svc:
            svc.wait_state("api", "running")
            yield _Api(svc, dsn, out, unused)
            assert svc.stop() == 0
    finally:
        drop_database(pg15, name)


def _metrics(svc: CdcService, token: str | None = None) -> str:
    status, text = svc.get("/metrics", token=token)
    assert status == 200, text
    assert isinstance(text, str)
    return text


def test_probes_are_open(api: _Api) -> None:
    assert api.svc.get("/livez", token="") == (200, {"status": "ok"})
    assert api.svc.get("/healthz", token="") == (200, {"status": "ok"})
    assert api.svc.get("/healthz", token="wrong") == (200, {"status": "ok"})


@pytest.mark.parametrize("token", ["", "wrong", TOKEN[:-1]], ids=["none", "wrong", "prefix"])
def test_token_is_required(api: _Api, token: str) -> None:
    for method, path, body in [
        ("GET", "/pipelines", None),
        ("GET", "/pipelines/api", None),
        ("GET", "/metrics", None),
        ("POST", "/pipelines/api/snapshots", {"tables": ["public.items"]}),
        ("GET", "/pipelines/api/snapshots", None),
        ("POST", "/pipelines/nope/snapshots", {"tables": ["public.items"]}),
    ]:
        status, doc = api.svc.get(path, token=token, method=method, body=body)
        assert status == 401, (method, path, status, doc)
        assert TOKEN not in str(doc)


def test_token_opens_everything(api: _Api) -> None:
    status, doc = api.svc.get("/pipelines", token=TOKEN)
    assert status == 200 and [p["name"] for p in doc["pipelines"]] == ["api"]
    assert _metrics(api.svc, TOKEN).startswith("# HELP")
    status, doc = api.svc.get("/pipelines/api/snapshots", token=TOKEN, method="POST", body={"tables": ["public.items"]})
    assert status == 202 and doc["id"], doc
    status, doc2 = api.svc.get(f"/pipelines/api/snapshots/{doc['id']}", token=TOKEN)
    assert status == 200 and doc2["tables"] == ["public.items"]
    # (the snapshot ends before the next test counts events)
    wait_for(
        lambda: api.svc.get(f"/pipelines/api/snapshots/{doc['id']}", token=TOKEN)[1]["state"] == "done",
        what="the snapshot done",
    )
    status, doc = api.svc.get("/pipelines/nope/snapshots", token=TOKEN, method="POST", body={"tables": ["public.items"]})
    assert status == 404
    assert api.svc.get("/pipelines/nope", token=TOKEN)[0] == 404
    assert api.svc.get("/nothing-here", token=TOKEN)[0] == 404


def test_metrics_count_events_by_pipeline_table_op(api: _Api) -> None:
    before = {op: metric_value(_metrics(api.svc), "cdc_events_total", pipeline="api", table="public.items", op=op) or 0 for op in "cud"}
    n = len(read_events(api.out))
    execute(
        api.dsn,
        "INSERT INTO items VALUES (1001, 'a'), (1002, 'b'), (1003, 'c')",
        "UPDATE items SET name = 'B' WHERE id = 1002",
        "DELETE FROM items WHERE id = 1003",
    )
    wait_for(lambda: len(read_events(api.out)) == n + 5, what="5 events")

    def counted() -> bool:
        text = _metrics(api.svc)
        got = {op: metric_value(text, "cdc_events_total", pipeline="api", table="public.items", op=op) for op in "cud"}
        return got == {"c": before["c"] + 3, "u": before["u"] + 1, "d": before["d"] + 1}

    wait_for(counted, what="cdc_events_total by op")
    status, text = api.svc.get("/metrics")
    assert status == 200
    assert "# TYPE cdc_events_total counter" in text
    assert metric_value(text, "cdc_pipeline_state", pipeline="api", state="running") == 1.0

    def gauges() -> bool:
        text = _metrics(api.svc)
        lag = metric_value(text, "cdc_source_lag_seconds", pipeline="api")
        age = metric_value(text, "cdc_checkpoint_age_seconds", pipeline="api")
        pos = metric_value(text, "cdc_checkpoint_position", pipeline="api")
        wal = metric_value(text, "cdc_pg_slot_retained_wal_bytes", pipeline="api", slot="cdc_api")
        return all(v is not None and v >= 0 for v in (lag, age, wal)) and bool(pos)

    wait_for(gauges, what="lag, checkpoint and retained-WAL gauges")
    text = _metrics(api.svc)
    assert metric_value(text, "cdc_sink_errors_total", pipeline="api") == 0.0
    assert metric_value(text, "cdc_pipeline_retries_total", pipeline="api") == 0.0


def test_unused_cdc_slot_is_warned_and_shown(api: _Api) -> None:
    def shown() -> float | None:
        return metric_value(_metrics(api.svc), "cdc_pg_unused_slot_retained_wal_bytes", slot=api.unused_slot)

    assert wait_for(lambda: shown() is not None, what="the unused slot in /metrics")
    text = _metrics(api.svc)
    assert metric_value(text, "cdc_pg_unused_slot_retained_wal_bytes", slot="cdc_api") is None
    warning = wait_for(lambda: find_log(api.svc.log_events(), "unused_slots"), what="the unused_slots warning")
    assert warning["level"] == "warning"
    assert api.unused_slot in warning["slots"] and "cdc_api" not in warning["slots"]
    assert "cdc drop" in warning["hint"]


def test_pipelines_json(api: _Api) -> None:
    n = len(read_events(api.out))
    execute(api.dsn, "INSERT INTO items VALUES (2001, 'x')")
    wait_for(lambda: len(read_events(api.out)) == n + 1, what="the event")

    def settled() -> dict[str, Any] | None:
        status, doc = api.svc.get("/pipelines")
        assert status == 200
        (p,) = doc["pipelines"]
        return p if p["source"].get("retained_wal_bytes") is not None and p["lag_s"] is not None else None

    p = wait_for(settled, what="the status with lag and retained WAL")
    assert p["name"] == "api" and p["state"] == "running" and p["last_error"] is None
    assert p["source"]["type"] == "postgres"
    assert p["source"]["slot"] == "cdc_api" and p["source"]["publication"] == "cdc_api"
    assert "/" in p["source"]["position"] and "/" in p["checkpoint"]["position"]
    assert p["checkpoint"]["age_s"] >= 0
    assert p["lag_s"] >= 0
    assert p["events_total"] >= 1
    assert isinstance(p["source"]["retained_wal_bytes"], int)
    assert p["sink"] == {"type": "file"}
    status, one = api.svc.get("/pipelines/api")
    assert status == 200 and one["name"] == "api" and one["state"] == "running"


# -- other settings of api: ------------------------------------------------------------------------


@PG15
def test_public_metrics_and_retained_wal_limit(pgdb: str, tmp_path: Path, free_port: int) -> None:
    """``public_metrics: true`` opens /metrics only; a slot holding more WAL than
    ``max_retained_wal_mb`` turns /healthz 503 while the pipeline keeps running."""
    execute(pgdb, "CREATE TABLE t (id int PRIMARY KEY)", "CREATE TABLE unlisted (id int, pad text)")
    out = tmp_path / "out"
    cfg = write_config(
        tmp_path,
        [pg_pipeline("p", pgdb, ["public.t"], out, max_retained_wal_mb=1)],
        api_port=free_port,
        extra={"api": {"token": TOKEN, "public_metrics": True}},
    )
    with CdcService(cfg) as svc:
        svc.wait_state("p", "running")
        assert svc.get("/metrics", token="")[0] == 200
        assert svc.get("/pipelines", token="")[0] == 401
        assert svc.get("/pipelines/p/snapshots", token="", method="POST", body={"tables": ["public.t"]})[0] == 401
        wait_for(lambda: svc.get("/healthz", token="") == (200, {"status": "ok"}), what="healthy")
        # An open transaction that wrote keeps the slot's restart_lsn before it, so the WAL
        # written after it stays retained however often the slot is confirmed.
        with psycopg.connect(pgdb) as holder:
            holder.execute("INSERT INTO unlisted VALUES (0, 'open')")
            execute(pgdb, "INSERT INTO unlisted SELECT g, repeat('x', 500) FROM generate_series(1, 6000) g")

            def unhealthy() -> Any:
                status, doc = svc.get("/healthz", token="")
                return doc if status == 503 else None

            doc = wait_for(unhealthy, timeout=30, what="/healthz 503")
            assert doc["status"] != "ok"
            assert doc["failing"] == [{"pipeline": "p", "state": "running", "error": "retained_wal_exceeded"}]
            p = svc.pipeline("p")
            assert p["state"] == "running"
            assert p["source"]["retained_wal_exceeded"] is True
            assert p["source"]["retained_wal_bytes"] > 1024 * 1024
            retained = metric_value(svc.get("/metrics", token="")[1], "cdc_pg_slot_retained_wal_bytes", pipeline="p")
            assert retained is not None and retained > 1024 * 1024
            holder.rollback()
        assert svc.stop() == 0


def test_non_loopback_listen_needs_a_token(tmp_path: Path) -> None:
    p = pg_pipeline("p", "postgresql://cdc@db:5432/shop", ["public.t"], tmp_path / "out")
    port = pick_port()
    cfg = write_config(tmp_path, [p], api_port=port, extra={"api": {"listen": f"0.0.0.0:{port}"}})
    proc = run_cli("validate", str(cfg))
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("api.listen: listening on a non-loopback address needs api.token")
    assert proc.stderr.startswith(f"{cfg}:")
    proc = run_cli("run", str(cfg), timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert "api.listen: listening on a non-loopback address needs api.token" in proc.stderr
    assert "Traceback" not in proc.stderr
    # with a token the file is valid
    cfg = write_config(tmp_path, [p], api_port=port, extra={"api": {"listen": f"0.0.0.0:{port}", "token": TOKEN}})
    proc = run_cli("validate", str(cfg))
    assert proc.returncode == 0, proc.stderr
