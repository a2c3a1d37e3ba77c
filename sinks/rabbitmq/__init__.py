"""RabbitMQ sink (``type: rabbitmq``): one persistent message per event on a topic exchange,
with publisher confirms.

The settings live in :mod:`sinks.rabbitmq.config` and the sink in :mod:`sinks.rabbitmq.sink`;
the AMQP client (aiormq) is imported only when a sink opens, so validating a pipeline file
needs no AMQP client.
"""

from sinks.rabbitmq.config import RabbitMQConfig
from sinks.rabbitmq.sink import RabbitMQSink

__all__ = ["RabbitMQConfig", "RabbitMQSink"]
