"""Transforms: the ordered list a pipeline applies to every event before its sink.

Theory of operation. The pipeline builds one :class:`Chain` from the file's ``transforms``
list when it starts, and calls :meth:`Chain.apply` on every list of events it is about to
hand to the sink (stream batches, snapshot chunks, ``initial_only`` snapshots alike). Each
transform sees the events of the tables it applies to (``tables:``; default all) and returns
the event itself, a new event, ``None`` (dropped) or a list (one event became several: their
ids become ``<id>#1``, ``<id>#2``, ...). A dropped event costs the checkpoint nothing: the
batch's position is still checkpointed by the pipeline.

Events are immutable: a transform that changes one makes a :class:`cdc.events.TransformedEvent`
(:func:`derive`), which may carry a destination (``route``, ``outbox``), a record that replaces
the envelope (``unwrap``, ``outbox``), a raw record key and headers; sinks read those through
``event.dest``, ``event.json``, ``event.key_json`` and ``event.headers``.

Masks are special twice over: the schema registry knows them (a masked column's definition
says ``"masked"``, and changing a mask makes a new version), and when a transform fails on an
event the event is reported with every mask of the list applied (:meth:`Chain.masked`), so an
unmasked value never leaves the service.

Third-party transforms register a class under the entry-point group ``cdc.transforms``
(docs/plugins.md): ``cls(settings: dict, pipeline: str)``, with ``apply(event)`` and an optional
classmethod ``check(settings) -> str | None`` that validation calls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from cdc.events import ChangeEvent, TransformedEvent

#: the built-in transforms, by name
BUILTIN = ("filter", "mask", "route", "unwrap", "outbox")


class TransformFailed(Exception):
    """A transform raised on one event (the pipeline dead-letters it or stops)."""

    def __init__(self, transform: str, event: ChangeEvent, message: str) -> None:
        super().__init__(f"transform {transform} failed on event {event.id}: {message}")
        self.transform = transform
        self.event = event
        self.message = message


_new = object.__new__


def derive(e: ChangeEvent, **changes: Any) -> TransformedEvent:
    """A copy of ``e`` (as a :class:`TransformedEvent`) with ``changes`` applied."""
    out: TransformedEvent = _new(TransformedEvent)
    out.id, out.op, out.ts_ms, out.source = e.id, e.op, e.ts_ms, e.source
    out.transaction, out.schema, out.key = e.transaction, e.schema, e.key
    out.before, out.after, out.unchanged, out.key_change = e.before, e.after, e.unchanged, e.key_change
    out.dest, out.value, out.raw_key, out.headers = e.dest, e.value, e.raw_key, e.headers
    out.pos = e.pos
    for name, value in changes.items():
        setattr(out, name, value)
    return out


class Step:
    """One transform of the chain, with its table scope."""

    __slots__ = ("name", "fn", "tables")

    def __init__(
        self,
        name: str,
        fn: Callable[[ChangeEvent], ChangeEvent | list[ChangeEvent] | None],
        tables: frozenset[str] | None,
    ) -> None:
        self.name, self.fn, self.tables = name, fn, tables


class Chain:
    """The pipeline's transforms, in order."""

    def __init__(self, steps: list[Step], masks: dict[str, dict[str, str]], mask_fn: Any) -> None:
        self.steps = steps
        #: table -> column -> mask, for the schema registry
        self.masks = masks
        self._mask_fn = mask_fn

    def apply(self, events: Sequence[ChangeEvent]) -> list[ChangeEvent]:
        """The events as the sink gets them. Raises :class:`TransformFailed` (with the
        event as it was before the chain, for :meth:`masked`)."""
        current: list[ChangeEvent] = list(events)
        for step in self.steps:
            fn, tables = step.fn, step.tables
            out: list[ChangeEvent] = []
            append = out.append
            for e in current:
                if tables is not None and e.schema.name not in tables:
                    append(e)
                    continue
                try:
                    result = fn(e)
                except TransformFailed:
                    raise
                except Exception as exc:
                    from cdc.transforms.cel import CelRuntimeError

                    msg = str(exc) if isinstance(exc, (CelRuntimeError, TransformError)) else (
                        f"{type(exc).__name__}"
                    )
                    raise TransformFailed(step.name, e, msg) from None
                if result is None:
                    continue
                if isinstance(result, ChangeEvent):
                    append(result)
                    continue
                if len(result) == 1:
                    append(result[0])
                    continue
                for n, r in enumerate(result, 1):
                    append(derive(r, id=f"{e.id}#{n}"))
            current = out
        return current

    def masked(self, e: ChangeEvent) -> ChangeEvent:
        """``e`` with every mask of the list applied (what a failure may show)."""
        if self._mask_fn is None:
            return e
        result: ChangeEvent = self._mask_fn(e)
        return result


class TransformError(Exception):
    """A transform's own runtime error on one event (message without values)."""


def build(items: list[dict[str, Any]], pipeline: str) -> Chain | None:
    """The chain for a pipeline's ``transforms`` list (already validated), or None."""
    if not items:
        return None
    from cdc.transforms import builtin

    steps: list[Step] = []
    masks: dict[str, dict[str, str]] = {}
    mask_fns: list[Callable[[ChangeEvent], ChangeEvent]] = []
    for item in items:
        ((name, settings),) = item.items()
        settings = dict(settings or {})
        tables = settings.pop("tables", None)
        scope = frozenset(_norm(t) for t in tables) if tables else None
        if name == "mask":
            mask = builtin.Mask(settings)
            for table, cols in mask.columns.items():
                masks.setdefault(table, {}).update(cols)
            mask_fns.append(mask.apply)
            steps.append(Step(name, mask.apply, frozenset(mask.columns)))
            continue
        fn = _make(name, settings, pipeline)
        steps.append(Step(name, fn, scope))
    mask_all = None
    if mask_fns:

        def mask_all(e: ChangeEvent) -> ChangeEvent:
            for m in mask_fns:
                e = m(e)
            return e

    return Chain(steps, masks, mask_all)


def _make(
    name: str, settings: dict[str, Any], pipeline: str
) -> Callable[[ChangeEvent], ChangeEvent | list[ChangeEvent] | None]:
    from cdc.transforms import builtin

    if name == "filter":
        return builtin.Filter(settings).apply
    if name == "route":
        return builtin.Route(settings).apply
    if name == "unwrap":
        return builtin.Unwrap(settings).apply
    if name == "outbox":
        return builtin.Outbox(settings).apply
    from cdc import registry

    cls = registry.load("transform", name)
    instance = cls(settings, pipeline)
    fn: Callable[[ChangeEvent], ChangeEvent | list[ChangeEvent] | None] = instance.apply
    return fn


def _norm(table: str) -> str:
    from cdc import names

    return names.normalize(table)


def check(
    items: list[dict[str, Any]],
    sink_type: str,
    sink_cls: Any,
    *,
    tables: set[str] | None = None,
    lenient: bool = False,
) -> list[tuple[str, str]]:
    """Problems of a pipeline's ``transforms`` list found from the file alone, as
    ``(path below transforms, message)``; paths like ``[0].filter.when``. ``tables``: the
    source's tables (names a transform gives must be among them); ``lenient``: some values are
    placeholders of unset variables (``cdc validate --no-env``), not checked as CEL."""
    from cdc.transforms import builtin

    problems: list[tuple[str, str]] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or len(item) != 1:
            continue  # reported by the field's own check
        ((name, settings),) = item.items()
        base = f"[{i}].{name}"
        settings = settings if isinstance(settings, dict) else {}
        if name in BUILTIN:
            for sub, message in builtin.check(name, settings, tables=tables, lenient=lenient):
                problems.append((f"{base}{sub}", message))
            if name == "route" and not getattr(sink_cls, "destinations", False):
                problems.append(
                    (base, f"the {sink_type} sink does not take per-event destinations, so "
                     "route cannot apply (route works with: kafka, redis, rabbitmq)")
                )
            if name in getattr(sink_cls, "refused_transforms", ()):
                problems.append((base, f"{name} does not apply to the {sink_type} sink"))
            continue
        try:
            from cdc import registry

            cls = registry.load("transform", name)
        except Exception as exc:
            problems.append((base, str(exc)))
            continue
        checker = getattr(cls, "check", None)
        if checker is not None:
            try:
                message = checker(dict(settings))
            except Exception as exc:
                message = f"the settings cannot be checked ({type(exc).__name__}: {exc})"
            if message:
                problems.append((base, str(message)))
    return problems
