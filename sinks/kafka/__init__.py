"""Kafka sink (``type: kafka``): one record per event through an idempotent producer.

The settings live in :mod:`sinks.kafka.config` and the sink in :mod:`sinks.kafka.sink`; the
Kafka client (confluent-kafka) is imported only when a sink opens, so validating a pipeline
file needs no Kafka client.
"""

from sinks.kafka.config import KafkaConfig
from sinks.kafka.sink import KafkaSink

__all__ = ["KafkaConfig", "KafkaSink"]
