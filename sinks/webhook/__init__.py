"""Webhook sink (not available yet: its settings validate, `cdc run` refuses)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cdc.errors import NotAvailableYet
from cdc.plugin import Sink, setting


def _check_url(value: str) -> str | None:
    if not (value.startswith("http://") or value.startswith("https://")):
        return "expected an http:// or https:// URL"
    return None


def _check_positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


@dataclass
class WebhookConfig:
    url: str = setting(doc="endpoint that receives POSTed batches", check=_check_url,
                       example="https://hooks.example.com/cdc")
    secret: str | None = setting(None, doc="HMAC-SHA256 key signing each request", secret=True)
    headers: dict[str, str] = setting(default_factory=dict, doc="extra request headers", secret=True)
    batch_max: int = setting(500, doc="most events per request", check=_check_positive)
    timeout_s: float = setting(10, doc="request timeout", check=_check_positive)
    max_backoff_s: float = setting(300, doc="cap on retry waits, Retry-After included", check=_check_positive)


class WebhookSink(Sink):
    Config = WebhookConfig
    available = False

    def open(self, resume: str | None) -> None:
        raise NotAvailableYet("the webhook sink is not available yet in this build of cdc")

    def write_schema(self, schema: Any) -> None:  # pragma: no cover - never opened
        pass

    def write(self, events: Sequence[Any]) -> None:  # pragma: no cover - never opened
        pass

    def flush(self) -> str | None:  # pragma: no cover - never opened
        return None

    def close(self) -> None:
        pass
