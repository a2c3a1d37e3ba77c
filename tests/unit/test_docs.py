"""The configuration reference is generated from the validated classes and must be current."""

from pathlib import Path

from cdc.docs import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_configuration_reference_is_current() -> None:
    assert DOC.read_text() == render(), (
        "docs/configuration.md is stale: run `python -m cdc.docs > docs/configuration.md`"
    )


def test_reference_names_every_plugin_setting() -> None:
    text = render()
    for key in ("source.dsn", "source.tables", "source.heartbeat_s", "sink.path", "sink.rotate_mb",
                "snapshot.mode", "columns.exclude", "values.bigint", "api.token", "state.path"):
        assert f"`{key}`" in text
