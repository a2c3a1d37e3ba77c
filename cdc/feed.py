"""The live feed of a pipeline's delivered events, for ``cdc tail`` through the service.

Theory of operation. Sinks such as Kafka or a webhook cannot be read back by cdc without
consuming someone else's data, so the running service hands out what it delivered instead:
``GET /pipelines/{name}/events?after=SEQ&wait=S`` (see :mod:`cdc.api`) long-polls an
:class:`EventFeed`, a ring of the last :data:`RING_EVENTS` events the sink acknowledged, each
with a sequence number.

It costs nothing while nobody follows. The feed is *attached* only while a client polled in the
last :data:`ATTACHED_S` seconds; until then the pipeline's dispatcher does one attribute read
per batch (:meth:`hold` is not called) and one per flush. While attached, the dispatcher keeps
references to the events it handed to the sink (after the transforms: masked values stay
masked) and, once ``sink.flush()`` returned (the events are durable), :meth:`publish` numbers
them into the ring and wakes the waiting clients. Events handed to the sink but never
acknowledged (a retry discards them) are dropped with :meth:`discard`; the retry delivers them
again and they are published then. Events set aside in the dead-letter sink are not published.
JSON is encoded on the API thread that answers, never on the dispatcher.

A client that falls more than the ring behind is told how many events it missed. Sequence
numbers start at 1 with each service process; a client asking after a number the feed has not
reached is following an earlier process, and gets everything the ring holds.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from cdc.events import ChangeEvent

#: events the ring keeps (their references: memory is what the events already held)
RING_EVENTS = 10_000
#: most events in one answer
MAX_ANSWER = 2_000
#: the feed detaches (and empties) this many seconds after the last poll
ATTACHED_S = 30.0
#: the longest a poll may wait for new events, in seconds
MAX_WAIT_S = 30.0


class EventFeed:
    """The ring of one pipeline's acknowledged events (see the module doc). ``hold``,
    ``publish``, ``discard`` and ``expire`` are called from the pipeline's dispatcher thread;
    ``poll`` from API threads."""

    def __init__(self, size: int = RING_EVENTS) -> None:
        #: True while a client follows; read by the dispatcher once per batch
        self.attached = False
        #: events handed to the sink since the last flush (only while attached)
        self.held: list[ChangeEvent] = []
        self._ring: deque[tuple[int, ChangeEvent]] = deque(maxlen=size)
        self._seq = 0
        self._aside: set[int] = set()
        self._polled_at = 0.0
        self._cond = threading.Condition()

    # -- the dispatcher's side ----------------------------------------------------------------

    def hold(self, events: list[ChangeEvent]) -> None:
        """``events`` were handed to the sink (not yet acknowledged)."""
        self.held.extend(events)

    def set_aside(self, event: ChangeEvent) -> None:
        """``event`` went to the dead-letter sink instead: it is not published."""
        self._aside.add(id(event))

    def publish(self) -> None:
        """The sink acknowledged everything held: number it into the ring, wake the clients."""
        held, self.held = self.held, []
        aside, self._aside = self._aside, set()
        with self._cond:
            seq = self._seq
            ring = self._ring
            for e in held:
                if aside and id(e) in aside:
                    continue
                seq += 1
                ring.append((seq, e))
            self._seq = seq
            self._cond.notify_all()

    def discard(self) -> None:
        """What was held will not be acknowledged (the pipeline retries from its checkpoint)."""
        self.held = []
        self._aside = set()

    def expire(self) -> None:
        """Detach once no client polled for :data:`ATTACHED_S` (called every few seconds)."""
        if self.attached and time.monotonic() - self._polled_at > ATTACHED_S:
            with self._cond:
                self.attached = False
                self._ring.clear()
            self.held = []

    # -- the API's side -------------------------------------------------------------------------

    def poll(self, after: int | None, wait: float, limit: int = MAX_ANSWER) -> bytes:
        """The JSON answer for a client that has seen events up to ``after`` (``None``: none
        yet; it starts at the end): the events after it, waiting up to ``wait`` seconds for
        one. ``{"seq": N, "missed": M, "events": [{"seq", "table", "op", "key", "event"}]}``;
        the client asks next with ``after=N``."""
        self._polled_at = time.monotonic()
        self.attached = True
        deadline = time.monotonic() + max(0.0, min(wait, MAX_WAIT_S))
        with self._cond:
            if after is None:
                return orjson.dumps({"seq": self._seq, "missed": 0, "events": []})
            if after > self._seq:  # an earlier process's numbers: all this one holds
                after = 0
            while self._seq <= after:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            items: list[tuple[int, ChangeEvent]] = []
            missed = 0
            if self._seq > after:
                ring = self._ring
                first = ring[0][0] if ring else self._seq + 1
                missed = max(0, first - after - 1)
                for item in ring:
                    if item[0] > after:
                        items.append(item)
                        if len(items) >= limit:
                            break
            seq = items[-1][0] if items else max(after, self._seq)
        self._polled_at = time.monotonic()
        events: list[dict[str, Any]] = [
            {
                "seq": n,
                "table": e.schema.name,
                "op": e.op,
                "key": e.key,
                "event": orjson.Fragment(e.json),
            }
            for n, e in items
        ]
        return orjson.dumps({"seq": seq, "missed": missed, "events": events})
