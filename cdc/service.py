"""The long-lived service behind ``cdc run``.

It opens the state store, starts the admin API and one :class:`~cdc.pipeline.Pipeline` per
pipeline of the file, then waits for a stop signal. On SIGTERM/SIGINT every pipeline stops
reading and gets 8 s to have what is in flight acknowledged and checkpointed; the process
exits within 10 s. A pipeline that fails stops alone; the service ends by itself only when
every pipeline has failed (exit 1) or finished (exit 0).

A reload (SIGHUP, ``POST /reload``) re-reads the file, and applies the difference
(:mod:`cdc.reload`): new pipelines start, removed ones stop, changed ones restart alone from
their checkpoints; the others are not touched. With several instances (``state.dsn``) a
reload of one instance is announced in the state database (:data:`RELOAD_META`) and every other
instance re-reads its own file within :data:`RELOAD_POLL_S`, so the instance that holds a
pipeline's lease applies it. Pause and resume set a flag in the state store that the pipeline
(in whichever instance holds its lease) follows.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import signal
import threading
import time
import uuid
from typing import Any

from cdc import names, snapshot
from cdc import reload as reloading
from cdc.api import AdminAPI
from cdc.config import PipelineConfig, ServiceConfig, is_loopback
from cdc.errors import CDCError, ConfigError, Refused, UnknownName
from cdc.lease import LeaseCoordinator
from cdc.log import add_secrets, configure, get_logger, redact
from cdc.metrics import Metrics
from cdc.pipeline import Pipeline, State
from cdc.state import CheckpointStore, SQLiteStore

#: seconds pipelines get to deliver what is in flight after a stop signal
STOP_GRACE_S = 8.0
#: the process exits within this many seconds of a stop signal
STOP_DEADLINE_S = 9.5
#: several instances: the state-store meta key (pipeline "") announcing a reload to the others
RELOAD_META = "service.reload"
#: several instances: how often each looks for another instance's reload announcement
RELOAD_POLL_S = 2.0


def open_store(config: ServiceConfig, *, readonly: bool = False) -> CheckpointStore:
    """The configured state store: PostgreSQL when ``state.dsn`` is set (several instances,
    leases), else the SQLite file of ``state.path``."""
    if config.state.dsn:
        from cdc.state_pg import PostgresStore

        return PostgresStore(config.state.dsn, readonly=readonly)
    return SQLiteStore(config.state.path, readonly=readonly)


class Service:
    def __init__(
        self,
        config: ServiceConfig,
        *,
        only: list[str] | None = None,
        adopt: list[str] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.config = config
        self.log = get_logger()
        self.only = only or []
        self.adopt = set(adopt or [])
        self._stop = stop or threading.Event()
        self._pipelines: list[Pipeline] = []
        self.metrics = Metrics(lambda: self._pipelines)
        self.api: AdminAPI | None = None
        self.store: CheckpointStore | None = None
        self.leases: LeaseCoordinator | None = None
        self._tick = time.monotonic()
        self._snapshot_lock = threading.Lock()
        self._reload_lock = threading.Lock()
        #: set by SIGHUP; the main loop reloads
        self._reload_signal = threading.Event()
        #: with several instances: the last reload announcement seen (see RELOAD_META)
        self._reload_seen: str | None = None
        self._reload_checked = 0.0
        self._shared: dict[str, Any] = {}

    # -- queries for the API ----------------------------------------------------------------------

    def pipeline(self, name: str) -> Pipeline | None:
        for p in self._pipelines:
            if p.name == name:
                return p
        return None

    def pipelines_status(self) -> list[dict[str, Any]]:
        return [p.status.as_dict() for p in self._pipelines]

    # -- snapshots (the API's side; the pipelines run them) ------------------------------------

    def _pipeline_or_raise(self, name: str) -> Pipeline:
        p = self.pipeline(name)
        if p is None or self.store is None:
            raise UnknownName(f"no pipeline named {name!r} in this service")
        return p

    def request_snapshot(self, name: str, body: Any) -> tuple[bool, dict[str, Any]]:
        """``POST /pipelines/{name}/snapshots``: ``(True, doc)`` for a new snapshot, ``(False,
        doc)`` with the running one's id when it already covers every table asked for. Raises
        :class:`UnknownName` or :class:`Refused`."""
        p = self._pipeline_or_raise(name)
        assert self.store is not None
        tables = body.get("tables") if isinstance(body, dict) else None
        if not isinstance(tables, list) or not tables or not all(isinstance(t, str) for t in tables):
            raise Refused('the body must be {"tables": ["schema.table", ...]} with at least one table')
        assert isinstance(body, dict)
        unknown = [k for k in body if k not in ("tables", "where")]
        if unknown:
            raise Refused(f"unknown field {', '.join(map(repr, unknown))} (this endpoint takes "
                          '"tables" and "where")')
        tables = [names.normalize(t) for t in tables]
        listed = list(getattr(p.config.source, "tables", []) or [])
        missing = [t for t in tables if t not in listed]
        if missing:
            raise Refused(f"not in pipeline {name}'s tables: {', '.join(missing)} (it lists {', '.join(listed)})")
        where = self._snapshot_where(p, tables, body.get("where"))
        if p.config.snapshot.mode == "initial_only":
            raise Refused(f"pipeline {name} has snapshot.mode initial_only: it does not stream, "
                          "so it takes no snapshots on demand")
        if p.status.state == "failed":
            kind = p.status.last_error["kind"] if p.status.last_error else "error"
            raise Refused(f"pipeline {name} has failed ({kind}); fix it and restart the service, then ask again")
        tables = list(dict.fromkeys(tables))
        with self._snapshot_lock:
            records = self.store.snapshots(name)
            running = snapshot.running_tables(records)
            todo = [t for t in tables if t not in running]
            if not todo:
                ids = list(dict.fromkeys(running[t] for t in tables))
                return False, {"id": ids[0], "ids": ids, "tables": tables, "state": "running"}
            record = snapshot.new_record(
                name, todo, "request", {t: c for t, c in where.items() if t in todo}
            )
            self.store.add_snapshot(name, record)
        p.log.info("snapshot_requested", snapshot=record["id"], tables=todo, reason="request")
        p.notify_snapshots()
        doc: dict[str, Any] = {"id": record["id"], "tables": todo, "state": record["state"]}
        if len(todo) < len(tables):
            doc["running"] = {t: running[t] for t in tables if t in running}
        return True, doc

    def _snapshot_where(self, p: Pipeline, tables: list[str], where: Any) -> dict[str, str]:
        """A partial snapshot's conditions (``"where": {table: SQL}``), each checked by the
        source's database before anything is recorded. Raises :class:`Refused` with the
        database's message."""
        if where is None:
            return {}
        if not isinstance(where, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in where.items()
        ):
            raise Refused('"where" must be {"schema.table": "SQL condition", ...}')
        conditions = {names.normalize(k): v for k, v in where.items()}
        stray = [t for t in conditions if t not in tables]
        if stray:
            raise Refused(f'"where" names tables not in "tables": {", ".join(stray)}')
        for table, condition in conditions.items():
            problem = snapshot.condition_problem(condition, p.config.source_type != "postgres")
            if problem:
                raise Refused(f"the condition for {table} is refused: {problem}")
        if not conditions:
            return {}
        from cdc import registry
        from cdc.plugin import PluginContext

        assert self.store is not None
        ctx = PluginContext(p.config, self.store, p.log, self.config.config_dir)
        source = registry.load("source", p.config.source_type)(p.config.source, ctx)
        reader = source.snapshot_reader()
        try:
            for table, condition in conditions.items():
                try:
                    reader.check_where(table, condition)
                except CDCError as exc:
                    if getattr(exc, "retriable", False):
                        raise
                    raise Refused(str(exc)) from exc
        finally:
            reader.close()
        return conditions

    def snapshots(self, name: str, snapshot_id: str | None = None) -> dict[str, Any]:
        """The pipeline's snapshot records (or one). Raises :class:`UnknownName`."""
        self._pipeline_or_raise(name)
        assert self.store is not None
        records = [snapshot.summary(r) for r in self.store.snapshots(name)]
        if snapshot_id is None:
            return {"snapshots": records}
        for r in records:
            if r["id"] == snapshot_id:
                return r
        raise UnknownName(f"pipeline {name} has no snapshot {snapshot_id!r}")

    def cancel_snapshot(self, name: str, snapshot_id: str) -> dict[str, Any]:
        """Cancel one snapshot. Raises :class:`UnknownName`."""
        p = self._pipeline_or_raise(name)
        assert self.store is not None
        record = self.store.cancel_snapshot(name, snapshot_id)
        if record is None:
            raise UnknownName(f"pipeline {name} has no snapshot {snapshot_id!r}")
        p.log.info("snapshot_cancel", snapshot=snapshot_id, state=record["state"])
        p.notify_snapshots()
        return snapshot.summary(record)

    # -- pause / resume ---------------------------------------------------------------------------

    def pause(self, name: str, body: Any = None) -> dict[str, Any]:
        """``POST /pipelines/{name}/pause``: the flag goes to the state store (the instance
        holding the lease follows it); waits a little for a local pipeline to show ``paused``.
        Raises :class:`UnknownName` or :class:`Refused`."""
        return self._pause_or_resume(name, body, pause=True)

    def resume(self, name: str, body: Any = None) -> dict[str, Any]:
        """``POST /pipelines/{name}/resume``: clears the flag; the pipeline reads again from
        its checkpoint."""
        return self._pause_or_resume(name, body, pause=False)

    def _pause_or_resume(self, name: str, body: Any, *, pause: bool) -> dict[str, Any]:
        p = self._pipeline_or_raise(name)
        if isinstance(body, dict) and body:
            raise Refused(f"unknown field(s) for this endpoint: {', '.join(sorted(body))}")
        if body is not None and not isinstance(body, dict):
            raise Refused("the body must be empty or {}")
        if p.status.state in (State.FAILED, State.FINISHED):
            raise Refused(f"pipeline {name} has {p.status.state}: there is nothing to "
                          f"{'pause' if pause else 'resume'}")
        try:
            p.pause() if pause else p.resume()
        except CDCError as exc:
            raise Refused(f"cannot save the {'pause' if pause else 'resume'} in the state store: {exc}") from exc
        self.log.info("pipeline_pause_requested" if pause else "pipeline_resume_requested", pipeline=name)
        wanted = (State.PAUSED,) if pause else (State.RUNNING, State.RETRYING)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and p.status.state not in wanted:
            if p.status.state in (State.STANDBY, State.FAILED, State.STOPPED):
                break
            time.sleep(0.05)
        state = p.status.state
        doc: dict[str, Any] = {"pipeline": name, "state": state, "paused": pause}
        if state is State.STANDBY:
            doc["note"] = ("another instance holds this pipeline's lease; it follows the "
                           "request within 5 s")
        return doc

    # -- reload ---------------------------------------------------------------------------------

    def request_reload(self, *_: Any) -> None:
        """SIGHUP: the main loop reloads (a signal handler must not wait on pipelines)."""
        self._reload_signal.set()

    def reload(self, trigger: str = "api") -> dict[str, Any]:
        """Re-read the pipeline file and apply the difference (see :mod:`cdc.reload`). Raises
        :class:`ConfigError` (an invalid file: nothing changes) or :class:`Refused`."""
        from cdc.config_loader import load_config

        with self._reload_lock:
            if self.store is None or self._stop.is_set():
                raise Refused("the service is starting or stopping; ask again once it runs")
            try:
                new = load_config(self.config.file)
            except ConfigError as exc:
                problems = [problem.render(exc.file) for problem in exc.problems]
                self.log.error("reload_refused", trigger=trigger, problems=problems,
                               hint="the service keeps running the previous configuration")
                raise
            try:
                plan = reloading.plan(self.config, new, self.config.file)
            except Refused as exc:
                self.log.error("reload_refused", trigger=trigger, error=str(exc),
                               hint="the service keeps running the previous configuration")
                raise
            add_secrets(new.secrets)
            self._grow(plan)
            self._apply(plan, new)
            doc = plan.as_dict()
            self.log.info("reloaded", trigger=trigger, **doc)
            if trigger != "peer":
                self._announce_reload()
            return doc

    def _announce_reload(self) -> None:
        """Several instances: tell the others (through the state database) to re-read their
        files, so a reload asked of any instance reaches the one holding each lease."""
        if self.leases is None or self.store is None:
            return
        token = f"{uuid.uuid4().hex}:{self.leases.instance_id}"
        try:
            self.store.set_meta("", RELOAD_META, token)
            self._reload_seen = token
        except Exception as exc:  # noqa: BLE001 - the state database may be down
            self.log.warning("reload_not_announced", error=redact(str(exc)),
                             hint="reload the other instances yourself (cdc reload, SIGHUP)")

    def _follow_peer_reloads(self) -> None:
        """Several instances: re-read the file when another instance announced a reload."""
        if self.leases is None or self.store is None:
            return
        now = time.monotonic()
        if now - self._reload_checked < RELOAD_POLL_S:
            return
        self._reload_checked = now
        try:
            token = self.store.get_meta("", RELOAD_META)
        except Exception:  # noqa: BLE001 - the state database may be down: next time
            return
        if token is None or token == self._reload_seen:
            return
        self._reload_seen = token
        with contextlib.suppress(CDCError):  # the outcome is logged by reload()
            self.reload(trigger="peer")

    def _grow(self, plan: reloading.ReloadPlan) -> None:
        """The pipelines whose only change is more tables take them while streaming; one that
        cannot (not streaming, or the source refused) moves to ``plan.restarted``."""
        for pc in list(plan.grown):
            p = self.pipeline(pc.name)
            added = plan.tables_added.get(pc.name, [])
            if p is None:
                continue
            request = p.add_tables(pc, added)
            if request.ok:
                plan.snapshots[pc.name] = request.snapshot
                continue
            self.log.info("tables_not_added_in_place", pipeline=pc.name, reason=request.reason,
                          action="restarting the pipeline from its checkpoint")
            plan.grown.remove(pc)
            plan.restarted.append(pc)

    def _apply(self, plan: reloading.ReloadPlan, new: ServiceConfig) -> None:
        """Stop the removed and the changed pipelines (each delivers and checkpoints what it
        read), then start the new and the changed ones; the others run on untouched."""
        selected = {p.name for p in new.pipelines if not self.only or p.name in self.only}
        going = {p.name for p in plan.restarted} | set(plan.removed)
        stopping = [p for p in self._pipelines if p.name in going]
        for p in stopping:
            p.stop(STOP_GRACE_S)
        deadline = time.monotonic() + STOP_DEADLINE_S
        for p in stopping:
            p.join(max(0.0, deadline - time.monotonic()))
        self._shared["slots_in_use"] = {
            getattr(p.source, "slot", None) or f"cdc_{p.name}"
            for p in new.pipelines if p.source_type == "postgres"
        }
        # (a pipeline grown in place keeps its config object, whose tables it updated: its
        # source, sink and snapshot driver share that object)
        current = {p.name: p for p in self._pipelines if p.name not in going}
        starting: list[Pipeline] = []
        for pc in new.pipelines:
            if pc.name in current or pc.name not in selected:
                continue
            pipeline = self._make_pipeline(pc, new)
            current[pc.name] = pipeline
            starting.append(pipeline)
        if self.leases is not None:
            for name in plan.removed:
                self.leases.remove(name)
        self.config = new
        self._pipelines = [current[p.name] for p in new.pipelines if p.name in current]
        for p in starting:
            p.start()

    def _make_pipeline(self, pc: PipelineConfig, cfg: ServiceConfig) -> Pipeline:
        lease = None
        if self.leases is not None:
            lease = self.leases.leases.get(pc.name) or self.leases.add(pc.name)
        return Pipeline(
            pc,
            cfg,
            self._store(),
            adopt=pc.name in self.adopt,
            on_events=self.metrics.count_events,
            shared=self._shared,
            lease=lease,
        )

    def _store(self) -> CheckpointStore:
        assert self.store is not None
        return self.store

    def alive(self) -> bool:
        """The service's main loop ticked recently (for the liveness probe)."""
        return time.monotonic() - self._tick < 10.0

    def health(self) -> tuple[bool, dict[str, Any]]:
        """``(healthy, doc)``: healthy when every pipeline runs (or stands by, or finished)."""
        failing = []
        # a standby that cannot reach the state database could not take a pipeline over
        unreachable = self.leases is not None and self.leases.unreachable
        for p in self._pipelines:
            s = p.status
            if s.state == "standby" and unreachable:
                failing.append({"pipeline": p.name, "state": s.state, "error": "state_unreachable"})
                continue
            if s.state in ("running", "standby", "finished", "paused"):
                if s.source_info.get("retained_wal_exceeded"):
                    failing.append({"pipeline": p.name, "state": s.state, "error": "retained_wal_exceeded"})
                continue
            kind = s.last_error["kind"] if s.last_error else s.state
            failing.append({"pipeline": p.name, "state": s.state, "error": kind})
        if failing:
            return False, {"status": "unhealthy", "failing": failing}
        return True, {"status": "ok"}

    # -- running ----------------------------------------------------------------------------------

    def request_stop(self, *_: Any) -> None:
        self._stop.set()

    def run(self) -> int:
        """Run until a stop signal or until no pipeline is left running. Returns the exit code."""
        cfg = self.config
        configure(cfg.log.level, cfg.log.format)
        add_secrets(cfg.secrets)
        log = self.log = get_logger()
        names = [p.name for p in cfg.pipelines]
        unknown = [n for n in self.only + sorted(self.adopt) if n not in names]
        if unknown:
            log.error("unknown_pipeline", pipelines=unknown, known=names)
            return 1
        host, _, port = cfg.api.listen.rpartition(":")
        if not is_loopback(host) and not cfg.api.token:
            log.error("refused", reason="the admin API listens on a non-loopback address without api.token")
            return 1
        try:
            self.store = open_store(cfg)
        except CDCError as exc:
            log.error("cannot_start", error_kind=exc.kind, error=redact(str(exc)))
            return 1
        try:
            self.api = AdminAPI(self, host, int(port), cfg.api.token, cfg.api.public_metrics)
        except OSError as exc:
            message = f"cannot listen on {cfg.api.listen}: {exc.strerror or exc}"
            if exc.errno == errno.EADDRINUSE:
                where = cfg.file or "CONFIG"
                message += (
                    f". Probably cdc is already running with this file: `cdc status {where}` asks "
                    f"the service at {cfg.api.listen}, and `ss -ltnp 'sport = :{port}'` names the "
                    "process holding the port. Stop that one first (two instances of one "
                    "pipeline fight over its slot); or, for another service, set api.listen to "
                    "another port"
                )
            log.error("cannot_start", error=message)
            self.store.close()
            return 1
        self.api.start()
        # The hot paths allocate many short-lived containers (rows, events) and few cycles:
        # collect the young generation less often, and keep the start-up objects (modules,
        # config) out of every collection. Measured: a snapshot's CPU -13%; a much higher
        # threshold lets the webhook client's request cycles (and their bodies) pile up
        # (peak RSS 65 MB at the default, 89 MB at 10,000, 275 MB at 50,000).
        gc.collect()
        gc.freeze()
        gc.set_threshold(10_000, 10, 10)
        selected = [p for p in cfg.pipelines if not self.only or p.name in self.only]
        slots_in_use = {
            getattr(p.source, "slot", None) or f"cdc_{p.name}" for p in cfg.pipelines if p.source_type == "postgres"
        }
        self._shared["slots_in_use"] = slots_in_use
        self.leases = self.store.lease_manager([pc.name for pc in selected])
        for pc in selected:
            self._pipelines.append(self._make_pipeline(pc, cfg))
        installed = self._install_signals()
        log.info(
            "service_started",
            api=f"{self.api.address[0]}:{self.api.address[1]}",
            pipelines=[p.name for p in self._pipelines],
            **({"instance": self.leases.instance_id} if self.leases is not None else {}),
        )
        for p in self._pipelines:
            p.start()
        if self.leases is not None:
            self.leases.start()
            with contextlib.suppress(Exception):  # an earlier announcement is not for us
                self._reload_seen = self.store.get_meta("", RELOAD_META)
        warned_unused = False
        try:
            while not self._stop.wait(0.5):
                self._tick = time.monotonic()
                if self._reload_signal.is_set():
                    self._reload_signal.clear()
                    # the outcome (or why the file was refused) is logged by reload()
                    with contextlib.suppress(CDCError):
                        self.reload(trigger="SIGHUP")
                self._follow_peer_reloads()
                if self._pipelines and all(p.done for p in self._pipelines):
                    break
                if not warned_unused:
                    warned_unused = self._warn_unused_slots()
        finally:
            code = self._shutdown()
            if installed:
                self._restore_signals(installed)
        return code

    def _warn_unused_slots(self) -> bool:
        for p in self._pipelines:
            unused = p.status.source_info.get("unused_slots")
            if unused is not None:
                if unused:
                    self.log.warning(
                        "unused_slots",
                        slots=[u["slot"] for u in unused],
                        hint="cdc_* replication slots that no pipeline of this file uses keep WAL "
                        "on the server; drop them with `cdc drop` or pg_drop_replication_slot()",
                    )
                return True
        return False

    def _shutdown(self) -> int:
        signalled = self._stop.is_set()
        self._stop.set()  # a reload asked from now on is refused
        # let a reload under way finish starting its pipelines, so that they are stopped too
        if self._reload_lock.acquire(timeout=STOP_GRACE_S / 2):
            self._reload_lock.release()
        deadline = time.monotonic() + STOP_DEADLINE_S
        for p in self._pipelines:
            p.stop(STOP_GRACE_S)
        for p in self._pipelines:
            p.join(max(0.0, deadline - time.monotonic()))
        states = [p.status.state for p in self._pipelines]
        if self.leases is not None:
            # give up the leases of the pipelines that stopped (their last checkpoint saved),
            # so another instance takes them at once instead of after the expiry
            self.leases.stop(release=[p.name for p in self._pipelines if p.join(0)])
        if self.api is not None:
            self.api.stop()
        if self.store is not None and all(p.join(0) for p in self._pipelines):
            self.store.close()
        self.log.info("service_stopped", states=dict(zip([p.name for p in self._pipelines], states, strict=True)))
        if signalled:
            return 0
        if states and all(s == "finished" for s in states):
            return 0
        if states and all(s == "failed" for s in states):
            return 1
        return 0

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous: dict[int, Any] = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, self.request_stop)
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self.request_reload)
        return previous

    @staticmethod
    def _restore_signals(previous: dict[int, Any]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
