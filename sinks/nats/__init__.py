"""NATS JetStream sink (``type: nats``): one JetStream message per event, de-duplicated by id.

The settings live in :mod:`sinks.nats.config` and the sink in :mod:`sinks.nats.sink`; the
client (nats-py) is imported only when a sink opens, so validating a pipeline file needs no
NATS client.
"""

from sinks.nats.config import NatsConfig
from sinks.nats.sink import NatsSink

__all__ = ["NatsConfig", "NatsSink"]
