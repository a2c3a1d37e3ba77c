"""A third-party sink (contract section 6, "Your own sink or source"): the tiny package in
tests/data/tiny_sink_plugin is installed for real with pip into a folder of its own, found
through its `cdc.sinks` entry point, validated with its own Config, and streamed through."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.helpers import CdcService, cdc_env, execute, pg_pipeline, run_cli, wait_for, write_config

PG15 = pytest.mark.parametrize("pg", ["pg15"], indirect=True)
PLUGIN_SRC = Path(__file__).resolve().parent.parent / "data" / "tiny_sink_plugin"


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a `cdc` process that sees the installed plugin (PYTHONPATH)."""
    base = tmp_path_factory.mktemp("plugin")
    src = base / "src"
    shutil.copytree(PLUGIN_SRC, src)  # pip builds in place: keep the repository clean
    site = base / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "--target", str(site), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (site / "tiny_sink.py").exists()
    assert list(site.glob("cdc_tiny_sink-*.dist-info/entry_points.txt"))
    return cdc_env(str(site))


def _config(tmp_path: Path, sink: dict, dsn: str = "postgresql://cdc@db:5432/shop", port: int = 18999) -> Path:
    p = pg_pipeline("p", dsn, ["public.t"], tmp_path / "unused")
    p["sink"] = sink
    return write_config(tmp_path, [p], api_port=port)


def test_validate_finds_the_installed_plugin(plugin_env: dict[str, str], tmp_path: Path) -> None:
    cfg = _config(tmp_path, {"type": "tiny", "path": "./tiny-out"})
    proc = run_cli("validate", str(cfg), env=plugin_env)
    assert proc.returncode == 0, proc.stderr
    # without the plugin on the path the type is unknown, and the message says what is installed
    proc = run_cli("validate", str(cfg))
    assert proc.returncode == 2
    assert "pipelines[0].sink.type: unknown sink type 'tiny'" in proc.stderr
    installed = proc.stderr.partition("installed: ")[2].split("\n")[0].split(", ")
    assert {"file", "kafka", "rabbitmq", "webhook"} <= set(installed), proc.stderr


def test_plugin_config_is_validated_with_its_own_config(plugin_env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        """\
pipelines:
  - name: p
    source: {type: postgres, dsn: "postgresql://cdc@db/shop", tables: [public.t]}
    snapshot: {mode: never}
    sink:
      type: tiny
      path: ./out
      colour: red
      prefix: not an identifier
  - name: q
    source: {type: postgres, dsn: "postgresql://cdc@db/shop", tables: [public.t]}
    snapshot: {mode: never}
    sink:
      type: tiny
"""
    )
    proc = run_cli("validate", str(path), env=plugin_env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 3, proc.stderr
    assert lines[0].startswith(f"{path}:8: pipelines[0].sink.colour: unknown key 'colour'")
    assert lines[1] == f"{path}:9: pipelines[0].sink.prefix: must be an identifier"
    assert lines[2].startswith(f"{path}:13: pipelines[1].sink.path: required key 'path' is missing")


def test_unknown_sink_type_names_the_installed_ones(plugin_env: dict[str, str], tmp_path: Path) -> None:
    cfg = _config(tmp_path, {"type": "tinyy", "path": "./out"})
    proc = run_cli("validate", str(cfg), env=plugin_env)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "pipelines[0].sink.type: unknown sink type 'tinyy' (did you mean 'tiny'?)" in line
    installed = line.partition("; installed: ")[2].split(", ")
    assert installed == sorted(installed)
    assert {"file", "kafka", "rabbitmq", "tiny", "webhook"} <= set(installed), line


@PG15
def test_run_streams_through_the_plugin(plugin_env: dict[str, str], pgdb: str, tmp_path: Path, free_port: int) -> None:
    execute(pgdb, "CREATE TABLE t (id int PRIMARY KEY, name text)")
    cfg = _config(tmp_path, {"type": "tiny", "path": "./tiny-out", "prefix": "tiny_test"}, dsn=pgdb, port=free_port)
    out = tmp_path / "tiny-out"  # relative to the config file's folder
    proc = run_cli("validate", str(cfg), env=plugin_env)
    assert proc.returncode == 0, proc.stderr

    def lines() -> list[dict]:
        path = out / "events.jsonl"
        return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []

    with CdcService(cfg, env=plugin_env) as svc:
        doc = svc.wait_state("p", "running")
        assert doc["sink"] == {"type": "tiny"}
        execute(pgdb, "INSERT INTO t VALUES (1, 'one'), (2, 'two')", "UPDATE t SET name = 'uno' WHERE id = 1", "DELETE FROM t WHERE id = 2")
        wait_for(lambda: len(lines()) == 4, what="4 events in the plugin's file")
        assert svc.stop() == 0
    events = lines()
    assert [(e["op"], e["key"]) for e in events] == [("c", {"id": 1}), ("c", {"id": 2}), ("u", {"id": 1}), ("d", {"id": 2})]
    assert {e["sink"] for e in events} == {"tiny_test"}
    assert events[2]["after"] == {"id": 1, "name": "uno"}
    assert len({e["id"] for e in events}) == 4
    schemas = [orjson.loads(line) for line in (out / "schemas.jsonl").read_bytes().splitlines()]
    assert [(s["name"], s["version"], s["key"]) for s in schemas] == [("public.t", 1, ["id"])]
    # the state knows the plugin's pipeline like any other
    proc = run_cli("status", str(cfg), "--json", env=plugin_env)
    assert proc.returncode == 0 and orjson.loads(proc.stdout)["pipelines"][0]["checkpoint"]["position"]


def test_a_transform_plugin_is_validated_and_applied(
    plugin_env: dict[str, str], pgdb: str, tmp_path: Path, free_port: int
) -> None:
    """A transform registered under `cdc.transforms` (the same tiny package): its own check runs
    at validation, and events through it get stable `<id>#<n>` ids when one becomes two."""
    from tests.helpers import read_events

    out = tmp_path / "out"

    def config(tag: dict) -> Path:
        p = pg_pipeline("p", pgdb, ["public.t"], out)
        p["transforms"] = [{"tag": tag}]
        return write_config(tmp_path, [p], api_port=free_port)

    bad = config({"value": "x"})
    proc = run_cli("validate", str(bad), env=plugin_env)
    assert proc.returncode == 2
    assert "pipelines[0].transforms[0].tag: tag needs 'field'" in proc.stderr
    proc = run_cli("validate", str(bad))  # without the plugin: an unknown transform
    assert proc.returncode == 2 and "unknown transform 'tag'" in proc.stderr

    execute(pgdb, "CREATE TABLE t (id int PRIMARY KEY, name text)")
    cfg = config({"field": "team", "value": "blue", "copies": 2})
    assert run_cli("validate", str(cfg), env=plugin_env).returncode == 0
    with CdcService(cfg, env=plugin_env) as svc:
        svc.wait_state("p", "running")
        execute(pgdb, "INSERT INTO t VALUES (1, 'one')")
        wait_for(lambda: len(read_events(out)) == 2, what="2 events")
        assert svc.stop() == 0
    a, b = read_events(out)
    assert a["after"] == b["after"] == {"id": 1, "name": "one", "team": "blue"}
    assert a["id"].endswith("#1") and b["id"] == a["id"][:-1] + "2"
