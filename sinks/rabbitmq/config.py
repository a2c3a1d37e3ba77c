"""The ``sink:`` section of a pipeline with ``type: rabbitmq``, and routing-key templates.

This module imports no AMQP client, so ``cdc validate`` and the docs generator can load it on
a machine without aiormq.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

from cdc.plugin import setting
from cdc.settings import template_check
from cdc.settings import template_fields as settings_template_fields

ROUTING_FIELDS = ("pipeline", "schema", "table")
#: AMQP 0-9-1 routing keys and exchange names are short strings: at most 255 bytes
MAX_SHORTSTR = 255


def _check_url(value: str) -> str | None:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        # the library's message may quote a piece of the password: never shown
        return (
            "not a valid URL: the port must be a number, and @ : / ? # in the user name or "
            "password must be percent-encoded (%40 %3A %2F %3F %23)"
        )
    if parts.scheme not in ("amqp", "amqps"):
        return "expected an amqp:// or amqps:// URL (amqp://user:password@host:5672/vhost)"
    if not parts.hostname:
        return "the URL has no host"
    return None


def _check_exchange(value: str) -> str | None:
    if not value:
        return "must not be empty (the default exchange cannot be declared as a topic exchange)"
    if value.startswith("amq."):
        return "names starting with 'amq.' are reserved by the broker"
    if len(value.encode()) > MAX_SHORTSTR:
        return f"longer than {MAX_SHORTSTR} bytes"
    return None


template_fields = settings_template_fields


def _template_check(allowed: tuple[str, ...]) -> Callable[[str], str | None]:
    return template_check(allowed, "routing key template")


def render_key(template: str, **values: str) -> str:
    """Fill a routing-key template (values are used as they are: in a topic exchange a
    ``.`` in a name adds a word, ``*`` and ``#`` are literal characters in a routing key)."""
    return template.format_map(values)


def display_url(url: str) -> str:
    """``url`` fit for logs and errors: the user name kept, the password and query left out."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        user = f"{unquote(parts.username)}@" if parts.username else ""
        netloc = user + host + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "(invalid url)"


def vhost_of(url: str) -> str:
    """The virtual host an AMQP URL names (``/`` when it names none)."""
    path = urlsplit(url).path
    return unquote(path[1:]) if path not in ("", "/") else "/"


@dataclass
class RabbitMQConfig:
    url: str = setting(
        doc="broker URL, amqp://user:password@host:5672/vhost (amqps:// for TLS)",
        check=_check_url,
        secret=True,
        example="amqp://cdc:${RABBITMQ_PASSWORD}@rabbitmq:5672/shop",
    )
    exchange: str = setting(
        "cdc",
        doc="durable topic exchange the events are published to; declared at start, before "
        "the first publish",
        check=_check_exchange,
    )
    routing_key: str = setting(
        "{pipeline}.{schema}.{table}",
        doc="routing key template of event messages; {pipeline} {schema} {table} are filled in",
        check=_template_check(ROUTING_FIELDS),
    )
    schema_routing_key: str = setting(
        "{pipeline}.schemas",
        doc="routing key of schema-definition messages (message_id name@version); {pipeline} "
        "is filled in",
        check=_template_check(("pipeline",)),
    )
    mandatory: bool = setting(
        True,
        doc="publish events as mandatory: an event no queue is bound for makes the pipeline "
        "retrying (nothing is skipped); false lets the broker drop unroutable events",
    )
    ca_file: str | None = setting(
        None,
        doc="PEM file of the CA(s) to trust for amqps:// instead of the system's; relative to "
        "the config file",
        path=True,
    )
