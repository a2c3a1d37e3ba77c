"""``cdc verify``: compare the source tables with what a pipeline's sink holds.

Theory of operation. The source is read exactly like a snapshot, through the source plugin's
:class:`~cdc.snapshot_api.SnapshotReader`: keyset chunks, each one short read-only transaction
without locks, rows already converted to their event JSON form by the stream's own converters
(so a row read here and the same row delivered by the pipeline are equal value for value), and
each chunk with its ``high`` watermark, the source position the stream must reach to have
delivered every transaction the read saw. Nothing is written to the source.

The sink is read through the sink plugin's :meth:`~cdc.plugin.Sink.verify_view`, a
:class:`SinkView`. For sinks that hold events (file, Kafka) the view is an :class:`EventFold`:
the events are folded in delivery order, as docs/events.md describes (``c``/``u``/``r`` put
``after`` at the key, keeping ``unchanged`` columns, ``d`` removes, ``t`` empties the table;
tables without a key as a multiset of whole rows), incrementally: a refresh reads only what
was written since the last one. The fold is in memory, so rows are compared directly by key,
without checksums.

Positions. The sink "has caught up with" a chunk once its position (the view's own, e.g. a
target database's recorded position, else the pipeline's checkpoint in the state store, which
is only saved after the sink made the events before it durable) has reached the chunk's
``high``. Round one reads every chunk, waits for the sink to catch up with it, and compares the
rows with the fold as it is then: a row that changed after the read shows up as a candidate
difference, never hidden. Candidates are then compared again, exactly: the fold records every
change of a candidate key with the event's ``source`` block, and the source plugin says which
of them stand before a read's ``high`` (:meth:`~cdc.plugin.Source.event_before`), so the row
is compared with the sink's value *at the read's position*. A key the source does not hold is
extra when the sink held it through the whole re-read. A candidate still undecided after
:data:`ROUNDS` rounds (it changed during every one) is reported on stderr and not counted.
Keyless tables are compared as multisets of whole rows, again until equal or :data:`ROUNDS`
rounds disagree.

Output: one line per table, ``public.t: N compared, 1 missing, 0 extra, 1 differing; missing
{"id": 7}; differing {"id": 9}``, or with ``--json`` ``{"tables": [...]}``; exit 0 when
everything is equal, 3 when something differs, 1 when verify cannot run.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from cdc.errors import FatalError, NotAvailableYet

if TYPE_CHECKING:
    from cdc.config import ServiceConfig

#: rounds of comparison per table (the first, then re-comparisons of the candidates)
ROUNDS = 4
#: examples of each kind shown per table
EXAMPLES = 5
#: source rows of chunks held while the sink has not caught up with them yet
PENDING_ROWS = 200_000


def as_delivered(row: dict[str, Any]) -> dict[str, Any]:
    """A source row as a sink's reader sees it once delivered: through JSON and back (JSON
    values read by the source keep their exact text, which a reader parses into numbers)."""
    parsed: dict[str, Any] = orjson.loads(orjson.dumps(row))
    return parsed


def row_id(value: Any) -> bytes:
    """A stable identity of a key or a whole row: its compact JSON with sorted names."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


@dataclass(frozen=True)
class RangeSum:
    """A source's checksum of the rows after ``after`` in key order (see
    :meth:`SinkView.range_checksum`): ``count`` rows, ``digest``, the last row's key as a cursor
    (``upto``; ``None`` when there is no row), ``done`` when no row follows, ``high`` the read's
    high watermark."""

    count: int
    digest: str
    after: Any
    upto: Any
    done: bool
    high: Any


# -- what the sink holds ----------------------------------------------------------------------------


class SinkView(ABC):
    """What a sink holds, for ``cdc verify``.

    ``refresh`` reads what the sink holds now; the other methods answer from what the last
    refresh read. Keyed tables are mappings of :func:`row_id` of the key to the row;
    ``watch`` asks the view to record every later change of some keys with the ``source``
    block of the event that made it (a view that cannot, such as a database table, records
    the value seen at each refresh with a ``None`` block).
    """

    def position(self) -> str | None:
        """The source position the sink itself records as reached (a serialized checkpoint
        position), or ``None``: the core then uses the pipeline's checkpoint."""
        return None

    @abstractmethod
    def refresh(self) -> None:
        """Read what the sink holds now."""

    @abstractmethod
    def rows(self, table: str) -> dict[bytes, dict[str, Any]]:
        """A keyed table's rows by key id."""

    @abstractmethod
    def whole_rows(self, table: str) -> Counter[bytes]:
        """A keyless table's rows: how many times each whole row (its :func:`row_id`) is held."""

    @abstractmethod
    def whole_rows_at(self, table: str, before: Callable[[dict[str, Any]], bool]) -> Counter[bytes]:
        """A keyless table's rows as they were when the last :meth:`watch_whole` began plus the
        changes since then whose event's ``source`` block ``before`` accepts (in order, up to
        the first it refuses)."""

    @abstractmethod
    def watch_whole(self, table: str) -> None:
        """Start recording the changes of a keyless table (see :meth:`whole_rows_at`)."""

    @abstractmethod
    def watch(self, table: str, ids: Iterable[bytes]) -> None:
        """Start recording the changes of these keys (replacing earlier watches of the table)."""

    @abstractmethod
    def history(self, table: str, rid: bytes) -> list[tuple[dict[str, Any] | None, dict[str, Any] | None]]:
        """A watched key's values: first ``(None, value when the watch began)``, then
        ``(source block, value after it)`` per change, in delivery order."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the view holds."""

    # A view of a database that holds the rows themselves (the postgres sink) compares key
    # ranges by checksums computed in SQL, when the source's snapshot reader can too
    # (``range_layout``, ``range_checksum``, ``read_range``, ``rows_from_text``).

    #: True when the view implements the two methods below
    checksums: bool = False

    def range_checksum(
        self, table: str, columns: list[str], key: list[str], key_types: list[str], after: Any, upto: Any
    ) -> tuple[int, str]:
        """Count and digest of the held rows with ``after`` < key <= ``upto`` (``None``:
        unbounded), computed like the source's :class:`RangeSum`."""
        raise NotImplementedError

    def range_rows(
        self, table: str, columns: list[str], key: list[str], key_types: list[str], after: Any, upto: Any
    ) -> list[list[bytes | None]]:
        """The held rows of that range, ``columns`` in text form (``None`` for NULL)."""
        raise NotImplementedError


class _Table:
    __slots__ = ("rows", "whole", "watched", "whole_base", "whole_log")

    def __init__(self) -> None:
        self.rows: dict[bytes, dict[str, Any]] = {}
        self.whole: Counter[bytes] = Counter()
        self.whole_base: Counter[bytes] = Counter()
        #: (source block, row id or None for a truncate, +1/-1) since watch_whole
        self.whole_log: list[tuple[dict[str, Any], bytes | None, int]] | None = None
        self.watched: dict[bytes, list[tuple[dict[str, Any] | None, dict[str, Any] | None]]] = {}


class EventFold(SinkView):
    """The fold of a sink's events (file, Kafka): ``read_new()`` yields the event dicts written
    since its last call, in delivery order; ``reset`` (returned by ``read_new`` through
    :meth:`reset`) starts over when the sink rewrote what was read (a restart cut events)."""

    def __init__(self, read_new: Callable[[], Iterable[dict[str, Any]]]) -> None:
        self._read_new = read_new
        self._tables: dict[str, _Table] = {}
        #: rows removed by the ``d`` of a key change, for ``unchanged`` columns of its ``c``
        self._moved: dict[tuple[str, bytes], dict[str, Any]] = {}

    def reset(self) -> None:
        """Forget everything folded (the sink's history is read again from its start)."""
        watched = {name: list(t.watched) for name, t in self._tables.items() if t.watched}
        self._tables = {}
        self._moved = {}
        for name, ids in watched.items():
            self._table(name).watched = {rid: [(None, None)] for rid in ids}

    def refresh(self) -> None:
        for event in self._read_new():
            self.apply(event)

    def _table(self, name: str) -> _Table:
        t = self._tables.get(name)
        if t is None:
            t = self._tables[name] = _Table()
        return t

    def apply(self, event: dict[str, Any]) -> None:
        schema = event.get("schema") or {}
        name = schema.get("name")
        op = event.get("op")
        if not isinstance(name, str) or op not in ("c", "u", "r", "d", "t"):
            return
        t = self._table(name)
        source = event.get("source") or {}
        if op == "t":
            t.rows.clear()
            t.whole.clear()
            for hist in t.watched.values():
                hist.append((source, None))
            if t.whole_log is not None:
                t.whole_log.append((source, None, 0))
            return
        key = event.get("key")
        after = event.get("after")
        before = event.get("before")
        if key is None:  # a keyless table: whole rows
            if op in ("u", "d") and isinstance(before, dict):
                rid = row_id(before)
                if t.whole.get(rid, 0) > 1:
                    t.whole[rid] -= 1
                else:
                    t.whole.pop(rid, None)
                if t.whole_log is not None:
                    t.whole_log.append((source, rid, -1))
            if op != "d" and isinstance(after, dict):
                rid = row_id(after)
                t.whole[rid] += 1
                if t.whole_log is not None:
                    t.whole_log.append((source, rid, 1))
            return
        rid = row_id(key)
        if op == "d":
            old = t.rows.pop(rid, None)
            change = event.get("key_change")
            if old is not None and isinstance(change, dict) and change.get("to") is not None:
                self._moved[(name, row_id(change["to"]))] = old
        elif isinstance(after, dict):
            row = dict(after)
            unchanged = event.get("unchanged") or ()
            if unchanged:
                prev = t.rows.get(rid)
                if prev is None:
                    prev = self._moved.pop((name, rid), None)
                for col in unchanged:
                    if prev is not None and col in prev:
                        row[col] = prev[col]
            t.rows[rid] = row
        changes = t.watched.get(rid)
        if changes is not None:
            changes.append((source, t.rows.get(rid)))

    def rows(self, table: str) -> dict[bytes, dict[str, Any]]:
        return self._table(table).rows

    def whole_rows(self, table: str) -> Counter[bytes]:
        return self._table(table).whole

    def watch_whole(self, table: str) -> None:
        t = self._table(table)
        t.whole_base = Counter(t.whole)
        t.whole_log = []

    def whole_rows_at(self, table: str, before: Callable[[dict[str, Any]], bool]) -> Counter[bytes]:
        t = self._table(table)
        rows = Counter(t.whole_base)
        for source, rid, delta in t.whole_log or ():
            if not before(source):
                break
            if rid is None:
                rows.clear()
            elif delta > 0:
                rows[rid] += 1
            elif rows.get(rid, 0) > 1:
                rows[rid] -= 1
            else:
                rows.pop(rid, None)
        return rows

    def watch(self, table: str, ids: Iterable[bytes]) -> None:
        t = self._table(table)
        t.watched = {rid: [(None, t.rows.get(rid))] for rid in ids}

    def history(self, table: str, rid: bytes) -> list[tuple[dict[str, Any] | None, dict[str, Any] | None]]:
        return self._table(table).watched.get(rid, [(None, None)])


class PartitionedFold(SinkView):
    """The folds of a sink whose events are ordered per partition only (Kafka): each partition
    is folded on its own (so a partition's copy of a ``t`` empties exactly its rows, as
    docs/events.md says) and a table is the union of the partitions' rows. ``read_new()``
    yields ``(partition, event)`` pairs; a partition is any hashable name."""

    def __init__(self, read_new: Callable[[], Iterable[tuple[Any, dict[str, Any]]]]) -> None:
        self._read_new = read_new
        self._parts: dict[Any, EventFold] = {}
        self._watched: dict[str, list[bytes]] = {}
        self._whole_watched: set[str] = set()

    def _part(self, name: Any) -> EventFold:
        fold = self._parts.get(name)
        if fold is None:
            fold = self._parts[name] = EventFold(lambda: ())
            for table, ids in self._watched.items():
                fold.watch(table, ids)
            for table in self._whole_watched:
                fold.watch_whole(table)
        return fold

    def refresh(self) -> None:
        for part, event in self._read_new():
            self._part(part).apply(event)

    def rows(self, table: str) -> dict[bytes, dict[str, Any]]:
        if len(self._parts) == 1:
            return next(iter(self._parts.values())).rows(table)
        out: dict[bytes, dict[str, Any]] = {}
        for fold in self._parts.values():
            out.update(fold.rows(table))
        return out

    def whole_rows(self, table: str) -> Counter[bytes]:
        out: Counter[bytes] = Counter()
        for fold in self._parts.values():
            out.update(fold.whole_rows(table))
        return out

    def whole_rows_at(self, table: str, before: Callable[[dict[str, Any]], bool]) -> Counter[bytes]:
        out: Counter[bytes] = Counter()
        for fold in self._parts.values():
            out.update(fold.whole_rows_at(table, before))
        return out

    def watch_whole(self, table: str) -> None:
        self._whole_watched.add(table)
        for fold in self._parts.values():
            fold.watch_whole(table)

    def watch(self, table: str, ids: Iterable[bytes]) -> None:
        self._watched[table] = list(ids)
        for fold in self._parts.values():
            fold.watch(table, self._watched[table])

    def history(self, table: str, rid: bytes) -> list[tuple[dict[str, Any] | None, dict[str, Any] | None]]:
        """The partition that changed the key (a key lives in one partition), else the one
        that holds it."""
        held: list[tuple[dict[str, Any] | None, dict[str, Any] | None]] = [(None, None)]
        for fold in self._parts.values():
            hist = fold.history(table, rid)
            if len(hist) > 1:
                return hist
            if hist[0][1] is not None:
                held = hist
        return held


# -- the comparison ---------------------------------------------------------------------------------


@dataclass
class TableReport:
    """What verify found for one table."""

    table: str
    compared: int = 0
    missing: int = 0
    extra: int = 0
    differing: int = 0
    #: keys (keyless tables: whole rows) of each kind, up to :data:`EXAMPLES`
    examples: dict[str, list[Any]] = field(default_factory=lambda: {"missing": [], "extra": [], "differing": []})
    #: keys that changed during every round (not counted)
    unsettled: int = 0

    def add(self, kind: str, example: Any, count: int = 1) -> None:
        setattr(self, kind, getattr(self, kind) + count)
        if len(self.examples[kind]) < EXAMPLES:
            self.examples[kind].append(example)

    @property
    def equal(self) -> bool:
        return not (self.missing or self.extra or self.differing)

    def line(self) -> str:
        text = (
            f"{self.table}: {self.compared} compared, {self.missing} missing, {self.extra} extra, "
            f"{self.differing} differing"
        )
        for kind in ("missing", "extra", "differing"):
            if self.examples[kind]:
                text += f"; {kind} " + ", ".join(json.dumps(e, ensure_ascii=False) for e in self.examples[kind])
        if self.unsettled:
            text += f" ({self.unsettled} changing during every comparison, not counted)"
        return text

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "table": self.table,
            "compared": self.compared,
            "missing": self.missing,
            "extra": self.extra,
            "differing": self.differing,
            "examples": self.examples,
        }
        if self.unsettled:
            doc["unsettled"] = self.unsettled
        return doc


class Verifier:
    """Compares tables of one pipeline (see the module notes).

    ``source`` is the pipeline's Source plugin (for its snapshot reader and positions),
    ``view`` the sink's :class:`SinkView`, ``checkpoint()`` the pipeline's saved checkpoint
    position (a string, or ``None``); the sink must reach a read's position within
    ``timeout`` seconds.
    """

    def __init__(
        self,
        source: Any,
        view: SinkView,
        checkpoint: Callable[[], str | None],
        *,
        chunk_rows: int = 10_000,
        timeout: float = 60.0,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.source = source
        self.view = view
        self.checkpoint = checkpoint
        self.chunk_rows = chunk_rows
        self.timeout = timeout
        self.progress = progress or (lambda _msg: None)
        self.reader = source.snapshot_reader()

    def close(self) -> None:
        self.reader.close()

    # -- positions ------------------------------------------------------------------------------

    def _sink_position(self) -> str | None:
        return self.view.position() or self.checkpoint()

    def _reached(self, high: Any) -> bool:
        """Whether the sink's own position or the pipeline's checkpoint reached ``high``."""
        for text in (self.view.position(), self.checkpoint()):
            if not text:
                continue
            try:
                position = self.source.parse_position(text)
            except ValueError:
                continue
            if self.source.position_reached(position, high):
                return True
        return False

    def _wait(self, high: Any) -> None:
        """Wait until the sink caught up with ``high``, then read what it holds."""
        deadline = time.monotonic() + self.timeout
        delay = 0.05
        while not self._reached(high):
            if time.monotonic() > deadline:
                raise FatalError(
                    f"the sink did not reach the source position {high} within {self.timeout:g} s "
                    f"(its position: {self._sink_position() or 'none'}); is the pipeline running?"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)
        self.view.refresh()

    # -- tables ---------------------------------------------------------------------------------

    def verify_table(self, table: str) -> TableReport:
        info = self.reader.describe(table)
        if self.view.checksums:
            if not hasattr(self.reader, "range_checksum"):
                raise NotAvailableYet(
                    f"cdc verify compares this sink by checksums, which the "
                    f"{self.source.connector or type(self.source).__name__} source cannot compute yet"
                )
            return self._by_checksums(table, bool(info.key))
        if not info.key:
            return self._keyless(table)
        report = TableReport(table)
        candidates = self._first_round(table, info.key, report)
        for _ in range(ROUNDS - 1):
            if not candidates:
                break
            self.progress(f"{table}: comparing {len(candidates)} changed rows again")
            candidates = self._recheck(table, candidates, report)
        report.unsettled = len(candidates)
        return report

    def _first_round(self, table: str, key_names: tuple[str, ...], report: TableReport) -> dict[bytes, Any]:
        """Every row once; returns the candidates (key id -> key)."""
        candidates: dict[bytes, Any] = {}
        seen: set[bytes] = set()
        pending: list[Any] = []
        pending_rows = 0

        def compare(chunks: list[Any]) -> None:
            rows = self.view.rows(table)
            for chunk in chunks:
                for key, after in chunk.rows:
                    rid = row_id(key)
                    seen.add(rid)
                    report.compared += 1
                    held = rows.get(rid)
                    # most rows are equal as read; JSON values (exact text) only after a round trip
                    if held != after and held != as_delivered(after):
                        candidates[rid] = key

        cursor = None
        while True:
            chunk = self.reader.read_chunk(table, cursor, self.chunk_rows)
            pending.append(chunk)
            pending_rows += len(chunk.rows)
            if chunk.done or pending_rows >= PENDING_ROWS or self._reached(chunk.high):
                self._wait(chunk.high)
                compare(pending)
                pending, pending_rows = [], 0
            if chunk.done:
                break
            cursor = chunk.cursor
        for rid, row in self.view.rows(table).items():
            if rid not in seen:
                candidates[rid] = {k: row.get(k) for k in key_names}
        return candidates

    def _recheck(self, table: str, candidates: dict[bytes, Any], report: TableReport) -> dict[bytes, Any]:
        """Read the table again and compare each candidate with the sink's value at the
        position of the read that saw it; returns the candidates still undecided."""
        self.view.watch(table, candidates)
        found: dict[bytes, tuple[dict[str, Any], Any]] = {}
        highs: list[Any] = []
        cursor = None
        while True:
            chunk = self.reader.read_chunk(table, cursor, self.chunk_rows)
            highs.append(chunk.high)
            for key, after in chunk.rows:
                rid = row_id(key)
                if rid in candidates:
                    found[rid] = (as_delivered(after), chunk.high)
            if chunk.done:
                break
            cursor = chunk.cursor
        self._wait(highs[-1])
        undecided: dict[bytes, Any] = {}
        for rid, key in candidates.items():
            history = self.view.history(table, rid)
            # Unchanged in the sink since the watch began (before this round's reads): its
            # value is the sink's at every read of the round, so any difference is real.
            steady = len(history) == 1
            if rid in found:
                after, high = found[rid]
                held = self._value_at(history, high)
                if held == after:
                    continue
                if steady:
                    report.add("missing" if held is None else "differing", key)
                else:  # it changed during the round: look again
                    undecided[rid] = key
                continue
            values = self._values_between(history, highs[0], highs[-1])
            if all(v is None for v in values):
                continue
            if all(v is not None for v in values):
                report.add("extra", key)
            else:
                undecided[rid] = key
        return undecided

    def _before(self, high: Any) -> Callable[[dict[str, Any]], bool]:
        def before(source: dict[str, Any]) -> bool:
            return bool(self.source.event_before(source, high))

        return before

    def _value_at(self, history: list[tuple[dict[str, Any] | None, dict[str, Any] | None]], high: Any) -> Any:
        value = history[0][1]
        for source, row in history[1:]:
            if source is None or not self.source.event_before(source, high):
                break
            value = row
        return value

    def _values_between(
        self, history: list[tuple[dict[str, Any] | None, dict[str, Any] | None]], low: Any, high: Any
    ) -> list[Any]:
        values = [self._value_at(history, low)]
        for source, row in history[1:]:
            if source is None or not self.source.event_before(source, high):
                break
            if not self.source.event_before(source, low):
                values.append(row)
        return values

    # -- by checksums (a sink that holds the rows: see SinkView.checksums) ---------------------

    def _by_checksums(self, table: str, keyed: bool) -> TableReport:
        reader = self.reader
        columns, key, key_types = reader.range_layout(table)
        report = TableReport(table)
        if not keyed:
            return self._keyless_text(table, columns, key, key_types)
        #: key id -> (key, range (after, upto), (source value, sink value))
        candidates: dict[bytes, tuple[Any, tuple[Any, Any], tuple[Any, Any]]] = {}
        cursor = None
        while True:
            rs = reader.range_checksum(table, cursor, self.chunk_rows)
            self._wait(rs.high)
            upto = None if rs.done else rs.upto
            report.compared += rs.count
            held = self.view.range_checksum(table, columns, key, key_types, cursor, upto)
            if held != (rs.count, rs.digest):
                for rid, (k, pair) in self._range_diff(table, columns, key, key_types, cursor, upto).items():
                    candidates[rid] = (k, (cursor, upto), pair)
            if rs.done:
                break
            cursor = rs.upto
        for _ in range(ROUNDS - 1):
            if not candidates:
                break
            self.progress(f"{table}: comparing {len(candidates)} changed rows again")
            by_range: dict[Any, list[bytes]] = {}
            for rid, (_, where, _) in candidates.items():
                by_range.setdefault(orjson.dumps(where), []).append(rid)
            still: dict[bytes, tuple[Any, tuple[Any, Any], tuple[Any, Any]]] = {}
            for rids in by_range.values():
                where = candidates[rids[0]][1]
                diff = self._range_diff(table, columns, key, key_types, *where)
                for rid in rids:
                    k, _, before = candidates[rid]
                    found = diff.get(rid)
                    if found is None:
                        continue  # equal now
                    now = found[1]
                    if now == before:  # steady on both sides: a real difference
                        source_value, held_value = now
                        kind = "missing" if held_value is None else "extra" if source_value is None else "differing"
                        report.add(kind, k)
                    else:
                        still[rid] = (k, where, now)
            candidates = still
        report.unsettled = len(candidates)
        return report

    def _range_diff(
        self, table: str, columns: list[str], key: list[str], key_types: list[str], after: Any, upto: Any
    ) -> dict[bytes, tuple[Any, tuple[Any, Any]]]:
        """Row by row, one key range: key id -> (key, (source value, sink value)) for each row
        that differs (``None``: absent)."""
        chunk = self.reader.read_range(table, after, upto)
        self._wait(chunk.high)
        source_rows = {row_id(k): (k, as_delivered(a)) for k, a in chunk.rows}
        held_rows = {
            row_id(k): (k, as_delivered(a))
            for k, a in self.reader.rows_from_text(
                table, self.view.range_rows(table, columns, key, key_types, after, upto)
            )
        }
        out: dict[bytes, tuple[Any, tuple[Any, Any]]] = {}
        for rid in source_rows.keys() | held_rows.keys():
            s_row = source_rows.get(rid)
            h_row = held_rows.get(rid)
            s_val = s_row[1] if s_row else None
            h_val = h_row[1] if h_row else None
            if s_val != h_val:
                out[rid] = ((s_row or h_row)[0], (s_val, h_val))  # type: ignore[index]
        return out

    def _keyless_text(self, table: str, columns: list[str], key: list[str], key_types: list[str]) -> TableReport:
        report = TableReport(table)
        previous: tuple[Counter[bytes], Counter[bytes]] | None = None
        for _ in range(ROUNDS):
            chunk = self.reader.read_chunk(table, None, None)
            self._wait(chunk.high)
            source_rows: Counter[bytes] = Counter(row_id(as_delivered(a)) for _, a in chunk.rows)
            held: Counter[bytes] = Counter(
                row_id(as_delivered(a))
                for _, a in self.reader.rows_from_text(
                    table, self.view.range_rows(table, columns, key, key_types, None, None)
                )
            )
            report = TableReport(table, compared=len(chunk.rows))
            missing, extra = source_rows - held, held - source_rows
            if not missing and not extra:
                return report
            if previous == (missing, extra):  # the same difference twice in a row
                break
            previous = (missing, extra)
        for rid, n in missing.items():
            report.add("missing", orjson.loads(rid), n)
        for rid, n in extra.items():
            report.add("extra", orjson.loads(rid), n)
        return report

    def _keyless(self, table: str) -> TableReport:
        report = TableReport(table)
        for _ in range(ROUNDS):
            self.view.refresh()
            self.view.watch_whole(table)
            chunk = self.reader.read_chunk(table, None, None)
            self._wait(chunk.high)
            source_rows: Counter[bytes] = Counter(row_id(as_delivered(after)) for _, after in chunk.rows)
            held = self.view.whole_rows_at(table, self._before(chunk.high))
            report = TableReport(table, compared=len(chunk.rows))
            for rid, n in (source_rows - held).items():
                report.add("missing", orjson.loads(rid), n)
            for rid, n in (held - source_rows).items():
                report.add("extra", orjson.loads(rid), n)
            if report.equal:
                break
            self.progress(f"{table}: keyless rows differ; comparing again")
        return report



# -- the command ------------------------------------------------------------------------------------


EXIT_EQUAL = 0
EXIT_CANNOT_RUN = 1
EXIT_DIFFERENT = 3


def run(
    config: ServiceConfig,
    pipeline: str,
    tables: list[str],
    *,
    as_json: bool,
    timeout: float,
    out: Callable[[str], None],
    err: Callable[[str], None],
) -> int:
    """``cdc verify CONFIG PIPELINE [TABLE...]``: the exit code (0 equal, 3 different, 1 cannot
    run); the report goes to ``out``, problems and progress to ``err``."""
    from cdc import names, registry
    from cdc.errors import CDCError
    from cdc.log import get_logger
    from cdc.plugin import PluginContext
    from cdc.service import open_store

    p = config.pipeline(pipeline)
    if p is None:
        err(f"cdc verify: no pipeline named {pipeline!r} in the file")
        return EXIT_CANNOT_RUN
    listed = list(getattr(p.source, "tables", []) or [])
    chosen = [names.normalize(t) for t in tables] or listed
    unknown = [t for t in chosen if t not in listed]
    if unknown:
        err(f"cdc verify: not in pipeline {p.name}'s tables: {', '.join(unknown)}")
        return EXIT_CANNOT_RUN
    if p.sink_format != "cdc":
        err(f"cdc verify: pipeline {p.name} writes format: {p.sink_format}; verify reads format: cdc only")
        return EXIT_CANNOT_RUN
    if p.transforms:
        err(
            f"cdc verify: pipeline {p.name} has transforms; rows they change, drop or route "
            "elsewhere show up as differences"
        )
    # The checkpoint says how far the sink got; a sink that records its own position (the
    # postgres sink) can be verified without a state store.
    store: Any = None
    try:
        store = open_store(config, readonly=True)
    except CDCError as exc:
        err(f"cdc verify {p.name}: no checkpoint to wait for ({exc}); only the sink's own position counts")
    verifier: Verifier | None = None
    view: SinkView | None = None
    try:
        ctx = PluginContext(p, store, get_logger(pipeline=p.name, command="verify"), config.config_dir)

        def checkpoint() -> str | None:
            if store is None:
                return None
            ck = store.get_checkpoint(p.name)
            return ck.position if ck else None

        source = registry.load("source", p.source_type)(p.source, ctx)
        view = registry.load("sink", p.sink_type)(p.sink, ctx).verify_view()
        verifier = Verifier(
            source, view, checkpoint, chunk_rows=p.snapshot.chunk_rows, timeout=timeout, progress=err
        )
        reports = [verifier.verify_table(t) for t in chosen]
    except CDCError as exc:
        err(f"cdc verify {p.name}: {exc}")
        return EXIT_CANNOT_RUN
    finally:
        if verifier is not None:
            verifier.close()
        if view is not None:
            view.close()
        if store is not None:
            store.close()
    if as_json:
        out(orjson.dumps({"tables": [r.as_json() for r in reports]}).decode())
    else:
        for r in reports:
            out(r.line())
    return EXIT_EQUAL if all(r.equal for r in reports) else EXIT_DIFFERENT
