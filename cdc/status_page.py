"""``GET /``: a small status page for people.

Theory of operation. The page is rendered on the server from the same documents as
``/pipelines`` (:meth:`cdc.pipeline.PipelineStatus.as_dict`), so names, states, lag, events/s
and snapshot progress are in the HTML as served: it works without JavaScript, and a
``<meta http-equiv="refresh">`` reloads it every few seconds. It has no external assets (the
style is inline; nothing is fetched from anywhere). Every value is HTML-escaped. Access follows
the token rules of ``/pipelines``; a browser may give the token as the HTTP Basic password.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from typing import Any

from cdc import __version__

#: seconds between the page's reloads
REFRESH_S = 5

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em;margin:0 0 .2em}
p.meta{color:#666;margin:0 0 1em}
table{border-collapse:collapse;min-width:60%}
th,td{text-align:left;padding:.35em .8em;border-bottom:1px solid #ddd;vertical-align:top}
th{background:#f4f4f4}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.state{font-weight:600;padding:.1em .5em;border-radius:.3em}
.running,.finished{background:#d9f2dc}
.retrying,.standby,.starting,.paused{background:#fdf0c8}
.failed,.stopped{background:#f8d4d4}
.error{color:#a11;font-size:.9em;max-width:40em}
progress{width:8em}
"""


def _e(value: Any) -> str:
    return html.escape("-" if value is None else str(value))


def _snapshot_cell(snap: dict[str, Any] | None) -> str:
    if not snap:
        return "-"
    done = int(snap.get("rows_done") or 0)
    total = int(snap.get("rows_estimated") or 0)
    bar = f' <progress max="{total}" value="{min(done, total)}"></progress>' if total else ""
    return (
        f'<span class="snapshot" data-snapshot="{_e(snap.get("id"))}">{_e(snap.get("id"))} '
        f'{_e(snap.get("state"))}: {done:,} of ~{total:,} rows</span>{bar}'
    )


def _row(p: dict[str, Any]) -> str:
    state = str(p.get("state") or "-")
    ck = p.get("checkpoint") or {}
    error = p.get("last_error") or None
    error_html = (
        f'<div class="error">{_e(error.get("kind"))}: {_e(error.get("message"))}</div>' if error else ""
    )
    return (
        f'<tr data-pipeline="{_e(p.get("name"))}">'
        f'<td>{_e(p.get("name"))}</td>'
        f'<td><span class="state {_e(state)}">{_e(state)}</span>{error_html}</td>'
        f'<td class="num">{_e(p.get("lag_s"))}</td>'
        f'<td class="num">{_e(p.get("events_per_s"))}</td>'
        f'<td class="num">{_e(p.get("events_total"))}</td>'
        f'<td>{_e(ck.get("position"))}</td>'
        f"<td>{_snapshot_cell(p.get('snapshot'))}</td>"
        "</tr>"
    )


def render(pipelines: Sequence[dict[str, Any]], healthy: bool) -> bytes:
    """The page for the pipelines' status documents."""
    rows = "".join(_row(p) for p in pipelines) or '<tr><td colspan="7">no pipelines</td></tr>'
    now = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_S}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>cdc: {"ok" if healthy else "attention"}</title>
<style>{_STYLE}</style></head>
<body>
<h1>cdc {html.escape(__version__)}</h1>
<p class="meta">{"all pipelines healthy" if healthy else "some pipelines need attention"} ·
{now} · reloads every {REFRESH_S} s · JSON: <a href="pipelines">/pipelines</a>,
<a href="metrics">/metrics</a></p>
<table>
<thead><tr><th>pipeline</th><th>state</th><th>lag (s)</th><th>events/s</th><th>events</th>
<th>checkpoint</th><th>snapshot</th></tr></thead>
<tbody>{rows}</tbody>
</table>
</body></html>
"""
    return page.encode()
