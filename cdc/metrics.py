"""Prometheus metrics for ``GET /metrics``.

Counters that change per batch (events by pipeline/table/op) are plain prometheus-client
counters incremented once per batch and key, never per event. Everything that describes a
state (lag, checkpoint age and position, retained WAL, unused slots, pipeline state) is read
from the pipelines' status objects at scrape time by a custom collector, so it is never stale.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, disable_created_metrics, generate_latest
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from cdc.pipeline import Pipeline

STATES = ("starting", "running", "retrying", "failed", "standby", "finished", "stopped", "paused")


def lsn_number(position: str | None) -> float | None:
    """A position as a number for a gauge (PostgreSQL LSN ``X/Y`` → bytes)."""
    if not position:
        return None
    if "/" in position:
        hi, _, lo = position.partition("/")
        try:
            return float((int(hi, 16) << 32) | int(lo, 16))
        except ValueError:
            return None
    return None


class _StatusCollector(Collector):
    def __init__(self, pipelines: Callable[[], Sequence[Pipeline]]) -> None:
        self._pipelines = pipelines

    def collect(self) -> Iterable[Metric]:
        now = time.time()
        state = GaugeMetricFamily("cdc_pipeline_state", "1 for the pipeline's current state", labels=["pipeline", "state"])
        lag = GaugeMetricFamily("cdc_source_lag_seconds", "seconds between the source commit of the newest delivered event and now (0 when caught up; grows while stalled)", labels=["pipeline"])
        ckpt_age = GaugeMetricFamily("cdc_checkpoint_age_seconds", "seconds since the last saved checkpoint", labels=["pipeline"])
        ckpt_pos = GaugeMetricFamily("cdc_checkpoint_position", "last saved checkpoint (PostgreSQL: LSN as a number)", labels=["pipeline"])
        retained = GaugeMetricFamily("cdc_pg_slot_retained_wal_bytes", "WAL the pipeline's replication slot holds back", labels=["pipeline", "slot"])
        unused = GaugeMetricFamily("cdc_pg_unused_slot_retained_wal_bytes", "WAL held by cdc_* slots that no pipeline of this file uses", labels=["slot", "database"])
        sink_errors = CounterMetricFamily("cdc_sink_errors", "sink failures that made the pipeline retry", labels=["pipeline"])
        dead = CounterMetricFamily("cdc_dead_letters", "events set aside in the dead-letter sink (since the service started)", labels=["pipeline"])
        retries = CounterMetricFamily("cdc_pipeline_retries", "times the pipeline restarted from its checkpoint after an error", labels=["pipeline"])
        snap_done = GaugeMetricFamily("cdc_snapshot_rows_done", "rows the pipeline's current (or last) snapshot has emitted, per table", labels=["pipeline", "table", "snapshot"])
        snap_total = GaugeMetricFamily("cdc_snapshot_rows_total", "rows estimated for the pipeline's current (or last) snapshot, per table", labels=["pipeline", "table", "snapshot"])
        seen_unused: set[str] = set()
        for p in self._pipelines():
            s = p.status
            for st in STATES:
                state.add_metric([s.name, st], 1.0 if s.state == st else 0.0)
            lag_s = s.lag_s
            if lag_s is not None:
                lag.add_metric([s.name], lag_s)
            if s.checkpoint_at is not None:
                ckpt_age.add_metric([s.name], max(0.0, now - s.checkpoint_at))
            pos = lsn_number(s.checkpoint)
            if pos is not None:
                ckpt_pos.add_metric([s.name], pos)
            info = s.source_info
            if info.get("retained_wal_bytes") is not None:
                retained.add_metric([s.name, str(info.get("slot", ""))], float(info["retained_wal_bytes"]))
            for u in info.get("unused_slots", ()):
                if u["slot"] not in seen_unused:
                    seen_unused.add(u["slot"])
                    unused.add_metric([u["slot"], str(u.get("database") or "")], float(u.get("retained_wal_bytes") or 0))
            sink_errors.add_metric([s.name], float(s.sink_errors))
            retries.add_metric([s.name], float(s.retries))
            dead.add_metric([s.name], float(s.dead_letters))
            snap = s.snapshot
            if snap:
                for table, t in snap.get("tables", {}).items():
                    snap_done.add_metric([s.name, table, snap["id"]], float(t.get("rows_done") or 0))
                    snap_total.add_metric([s.name, table, snap["id"]], float(t.get("rows_estimated") or 0))
        return [build_info(), state, lag, ckpt_age, ckpt_pos, retained, unused, sink_errors, retries,
                dead, snap_done, snap_total]


def build_info() -> GaugeMetricFamily:
    """``cdc_build_info{version, python}`` 1: which build answers (beside ``cdc version``)."""
    import platform

    from cdc import __version__

    info = GaugeMetricFamily("cdc_build_info", "the running build: always 1, the facts are labels",
                             labels=["version", "python"])
    info.add_metric([__version__, platform.python_version()], 1.0)
    return info


class Metrics:
    """The service's metrics registry."""

    def __init__(self, pipelines: Callable[[], Sequence[Pipeline]]) -> None:
        # no `cdc_events_created` series beside each counter: noise for every dashboard
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        self.events = PromCounter(
            "cdc_events", "events delivered to the sink", ["pipeline", "table", "op"], registry=self.registry
        )
        self.registry.register(_StatusCollector(pipelines))

    def count_events(self, pipeline: str, counts: Counter[tuple[str, str]]) -> None:
        for (table, op), n in counts.items():
            self.events.labels(pipeline, table, op).inc(n)

    def render(self) -> bytes:
        return generate_latest(self.registry)
