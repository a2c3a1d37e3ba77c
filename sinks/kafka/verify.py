"""Reading a pipeline's Kafka topics back for ``cdc verify`` (see :mod:`cdc.verify`).

Theory of operation. One consumer (no group offsets are committed: ``enable.auto.commit`` off,
a throw-away ``group.id``) is assigned every partition of the pipeline's data topics (the
``topic`` template rendered for each listed table) at the offset after the last record it read
(from the beginning the first time). Each :meth:`TopicsReader.read_new` re-assigns those
offsets and consumes until every partition reports its end (partition EOF, not the
watermarks: some Kafka-compatible brokers answer ListOffsets wrongly), so a refresh made after
the pipeline's checkpoint passed a position holds every record the broker acknowledged before
it. Tombstones (null values) are skipped; every event goes to the fold of its own
``(topic, partition)`` (:class:`cdc.verify.PartitionedFold`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson

from cdc.errors import RetriableSinkError
from cdc.verify import PartitionedFold

#: seconds one refresh may take to read every partition to its end
READ_TIMEOUT_S = 60.0


class TopicsReader:
    """Reads new records of ``topics`` at each call (see the module notes)."""

    def __init__(self, consumer: Any, ck: Any, topics: list[str]) -> None:
        self._consumer = consumer
        self._ck = ck
        self._topics = topics
        #: (topic, partition) -> the next offset to read
        self._next: dict[tuple[str, int], int] = {}

    def _partitions(self) -> list[tuple[str, int]]:
        md = self._consumer.list_topics(timeout=10)
        found: list[tuple[str, int]] = []
        for topic in self._topics:
            tm = md.topics.get(topic)
            if tm is None or tm.error is not None:
                continue
            found.extend((topic, p) for p in sorted(tm.partitions))
        return found

    def read_new(self) -> Iterator[tuple[Any, dict[str, Any]]]:
        ck = self._ck
        try:
            parts = self._partitions()
        except ck.KafkaException as exc:
            raise RetriableSinkError(f"cannot read the topics {', '.join(self._topics)}: {exc}") from exc
        if not parts:
            return
        self._consumer.assign(
            [ck.TopicPartition(t, p, self._next.get((t, p), ck.OFFSET_BEGINNING)) for t, p in parts]
        )
        pending = set(parts)
        deadline = time.monotonic() + READ_TIMEOUT_S
        while pending:
            if time.monotonic() > deadline:
                raise RetriableSinkError(
                    f"cannot read {len(pending)} partitions of {', '.join(self._topics)} to their end "
                    f"within {READ_TIMEOUT_S:.0f} s"
                )
            for m in self._consumer.consume(10000, 0.2):
                err = m.error()
                where = (m.topic(), m.partition())
                if err is not None:
                    if err.code() == ck.KafkaError._PARTITION_EOF:
                        pending.discard(where)
                    continue
                self._next[where] = m.offset() + 1
                value = m.value()
                if value is None:
                    continue
                try:
                    event = orjson.loads(value)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(event, dict):
                    yield where, event

    def close(self) -> None:
        try:
            self._consumer.close()
        except Exception:  # noqa: BLE001 - closing must not raise
            pass


class KafkaView(PartitionedFold):
    """The per-partition folds of the pipeline's topics; closing it closes the consumer."""

    def __init__(self, reader: TopicsReader) -> None:
        super().__init__(reader.read_new)
        self._reader = reader

    def close(self) -> None:
        self._reader.close()
