"""Redis Streams sink (``type: redis``): one stream entry per event, one MULTI/EXEC per batch.

The settings live in :mod:`sinks.redis.config` and the sink in :mod:`sinks.redis.sink`; the
client (redis-py) is imported only when a sink opens, so validating a pipeline file needs no
Redis client.
"""

from sinks.redis.config import RedisConfig
from sinks.redis.sink import RedisSink

__all__ = ["RedisConfig", "RedisSink"]
