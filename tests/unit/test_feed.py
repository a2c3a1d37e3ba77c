"""The event feed behind `cdc tail` through the service (cdc/feed.py): idle until followed,
only acknowledged events, numbered, bounded, and honest about what a slow client missed."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import orjson

from cdc.feed import EventFeed


def _event(n: int, table: str = "public.t") -> Any:
    return SimpleNamespace(schema=SimpleNamespace(name=table), op="c", key={"id": n},
                           json=orjson.dumps({"id": str(n), "after": {"id": n}}))


def _poll(feed: EventFeed, after: int | None, wait: float = 0.0) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(feed.poll(after, wait))
    return doc


def test_unfollowed_feed_is_detached_and_a_poll_starts_at_the_end() -> None:
    feed = EventFeed()
    assert not feed.attached
    assert _poll(feed, None) == {"seq": 0, "missed": 0, "events": []}
    assert feed.attached


def test_only_acknowledged_events_are_published_in_order_without_the_set_aside_ones() -> None:
    feed = EventFeed()
    start = _poll(feed, None)["seq"]
    events = [_event(i) for i in range(5)]
    feed.hold(events)
    assert _poll(feed, start)["events"] == []  # handed to the sink, not acknowledged
    feed.set_aside(events[2])
    feed.publish()
    doc = _poll(feed, start)
    assert [(e["seq"], e["key"]["id"]) for e in doc["events"]] == [(1, 0), (2, 1), (3, 3), (4, 4)]
    assert doc["events"][0] == {"seq": 1, "table": "public.t", "op": "c", "key": {"id": 0},
                                "event": {"id": "0", "after": {"id": 0}}}
    assert doc["seq"] == 4
    feed.hold([_event(9)])
    feed.discard()  # a retry: never acknowledged
    feed.publish()
    assert _poll(feed, 4) == {"seq": 4, "missed": 0, "events": []}


def test_a_waiting_poll_wakes_when_events_are_acknowledged() -> None:
    feed = EventFeed()
    _poll(feed, None)

    def later() -> None:
        time.sleep(0.2)
        feed.hold([_event(1)])
        feed.publish()

    threading.Thread(target=later).start()
    started = time.monotonic()
    doc = _poll(feed, 0, wait=10)
    assert [e["key"]["id"] for e in doc["events"]] == [1]
    assert time.monotonic() - started < 5


def test_a_slow_client_is_told_what_it_missed_and_an_earlier_process_starts_over() -> None:
    feed = EventFeed(size=3)
    _poll(feed, None)
    feed.hold([_event(i) for i in range(5)])
    feed.publish()
    doc = _poll(feed, 0)
    assert doc["missed"] == 2 and [e["seq"] for e in doc["events"]] == [3, 4, 5]
    doc = _poll(feed, 1000)  # numbers of a service process that ended
    assert [e["seq"] for e in doc["events"]] == [3, 4, 5]


def test_the_feed_detaches_and_empties_when_nobody_polls() -> None:
    feed = EventFeed()
    _poll(feed, None)
    feed.hold([_event(1)])
    feed.publish()
    feed._polled_at -= 31  # noqa: SLF001 - the clock moved on
    feed.expire()
    assert not feed.attached and _poll(feed, 0)["events"] == []
