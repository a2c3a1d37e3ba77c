"""Webhook sink: batches of events POSTed to an HTTP endpoint (``type: webhook``).

See :mod:`sinks.webhook.sink` for how batches are built, signed, retried and refused, and
``docs/webhook.md`` for the receiver's side.
"""

from sinks.webhook.sink import WebhookConfig, WebhookSink

__all__ = ["WebhookConfig", "WebhookSink"]
