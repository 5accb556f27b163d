"""The web console's pages: plain HTML rendered on the server from the same queries as the API.

Pure functions of their data (no I/O), so ``app.py`` fetches and these only render. Every value
shown is escaped. The only script (``static/console.js``) refreshes the CSV jobs' progress bars
from ``/api/v1/csv-jobs`` once a second.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape
from typing import Any
from urllib.parse import urlencode

from console.chart import CLASS_COLOURS, legend_html

NAV = (
    ("fleet", "/console/", "Fleet"),
    ("streams", "/console/streams", "Stream explorer"),
    ("alerts", "/console/alerts", "Alerts"),
    ("jobs", "/console/jobs", "CSV jobs"),
    ("configs", "/console/configs", "Stream configs"),
)


def e(value: Any) -> str:
    return "" if value is None else escape(str(value))


def layout(title: str, body: str, *, active: str = "", who: str = "", refresh: int = 0) -> str:
    nav = "".join(
        f'<a href="{href}"{" class=active" if name == active else ""}>{label}</a>'
        for name, href, label in NAV
    )
    user = (
        f'<span class="who">{e(who)} · <form method="post" action="/console/logout">'
        '<button class="link">log out</button></form></span>'
        if who
        else ""
    )
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{e(title)} · Tributary</title>{meta}"
        '<link rel="stylesheet" href="/console/static/console.css">'
        '<script src="/console/static/console.js" defer></script></head>'
        f'<body data-page="{e(active)}">'
        f"<header><strong>Tributary</strong><nav>{nav if who else ''}</nav>{user}</header>"
        f"<main><h1>{e(title)}</h1>{body}</main></body></html>"
    )


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], empty: str, css: str = "") -> str:
    """``rows`` are already HTML (escape with ``e``)."""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    if not body:
        return f'<p class="empty">{e(empty)}</p>'
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def when(value: Any) -> str:
    """An ISO timestamp as ``2026-12-02 19:11:58`` (UTC, whole seconds), escaped."""
    if value is None:
        return "–"
    text = str(value)
    return e(text[:19].replace("T", " ")) if len(text) >= 19 and text[10] == "T" else e(text)


def badge(cls: Any) -> str:
    colour = CLASS_COLOURS.get(str(cls), "#555")
    return f'<span class="badge" style="background:{colour}">{e(cls)}</span>'


def rate(value: float | None) -> str:
    return "–" if value is None else f"{value:,.1f}"


def stream_link(domain: str, source: str, stream: str, label: str | None = None) -> str:
    query = urlencode({"domain": domain, "source_id": source, "stream_id": stream})
    return f'<a href="/console/streams?{e(query)}">{e(label or f"{domain}/{source}/{stream}")}</a>'


# -- pages -----------------------------------------------------------------------------------
def login_page(error: str = "", next_url: str = "/console/") -> str:
    problem = f'<p class="error">{e(error)}</p>' if error else ""
    return layout(
        "Log in",
        f'{problem}<form method="post" action="/console/login" class="login">'
        f'<input type="hidden" name="next" value="{e(next_url)}">'
        '<label>API key <input type="password" name="key" autocomplete="off" '
        'placeholder="trb_…" required size="60"></label> <button>Log in</button></form>'
        "<p>Any key works: <code>read_only</code> keys read everything, <code>source_writer"
        "</code> keys read their sources, <code>admin</code> keys may also edit stream "
        "configs.</p>",
    )


def fleet_page(status: dict[str, Any], who: str) -> str:
    services = [
        [
            e(s["name"]),
            '<span class="up">up</span>'
            if s["up"] and s["ready"] is not False
            else '<span class="warn">up, not ready</span>'
            if s["up"]
            else f'<span class="down">down</span> <small>{e(s["error"])}</small>',
            rate(s["in_per_s"]),
            rate(s["out_per_s"]),
            rate(s["errors_per_s"]),
            ", ".join(
                f'<span class="down">{e(g)} open</span>' if v else f"{e(g)} closed"
                for g, v in s["breakers_open"].items()
            )
            or "–",
            f"<small>{e(s['url'])}</small>",
        ]
        for s in status["services"]
    ]
    consumers = [
        [
            e(c["durable"]),
            e(c["stream"]),
            f"{c['num_pending']:,}" if c["exists"] else "–",
            f"{c['num_ack_pending']:,}" if c["exists"] else "–",
            f"{c['num_redelivered']:,}" if c["exists"] else "not created",
        ]
        for c in status["consumers"]
    ]
    streams = [
        [
            e(s["name"]),
            f"{s['messages']:,}" if s["exists"] else "missing",
            f"{s['bytes']:,}" if s["exists"] else "–",
            str(s["consumers"]),
        ]
        for s in status["streams"]
    ]
    dlq = status["dlq_depth"]
    breakers = status["breakers_open"]
    summary = (
        f'<p class="summary"><span class="{"down" if dlq else "up"}">DLQ depth {dlq:,}</span> · '
        + (
            f'<span class="down">open breakers: {e(", ".join(breakers))}</span>'
            if breakers
            else '<span class="up">no breaker open</span>'
        )
        + (
            f' · <span class="down">NATS: {e(status["nats_error"])}</span>'
            if status["nats_error"]
            else ""
        )
        + f" · rates over {status['scrape_interval_seconds']:g} s scrapes</p>"
    )
    body = (
        summary
        + "<h2>Services</h2>"
        + table(
            ["service", "state", "in/s", "out/s", "errors/s", "breakers", "url"],
            services,
            "no service configured",
        )
        + "<h2>Consumers</h2>"
        + table(
            ["durable", "stream", "pending", "ack pending", "redelivered"], consumers, "no consumer"
        )
        + "<h2>Streams</h2>"
        + table(["stream", "messages", "bytes", "consumers"], streams, "no stream")
    )
    return layout("Fleet status", body, active="fleet", who=who, refresh=5)


def explorer_page(
    *,
    who: str,
    form: dict[str, str],
    recent: Sequence[dict[str, Any]],
    chart_svg: str | None,
    summary: str,
    latest: Sequence[dict[str, Any]],
    alerts: Sequence[dict[str, Any]],
    predictions: Sequence[dict[str, Any]],
    error: str = "",
) -> str:
    checked = set(form.get("cls", "").split(",")) - {""}
    boxes = "".join(
        f'<label class="cls"><input type="checkbox" name="cls" value="{c}"'
        f"{' checked' if c in checked else ''}> {badge(c)}</label>"
        for c in CLASS_COLOURS
    )
    fields = "".join(
        f'<label>{label} <input name="{name}" value="{e(form.get(name, ""))}"'
        f"{' required' if name in ('domain', 'source_id', 'stream_id') else ''}"
        f"{' placeholder=' + chr(34) + hint + chr(34) if hint else ''}></label> "
        for name, label, hint in (
            ("domain", "domain", ""),
            ("source_id", "source", ""),
            ("stream_id", "stream", ""),
            ("from", "from", "ISO 8601, default: 1 h ago"),
            ("to", "to", "default: now"),
        )
    )
    body = (
        f'<form method="get" action="/console/streams" class="explorer">{fields}'
        f"<div>classes: {boxes} <button>Show</button></div></form>"
    )
    if error:
        body += f'<p class="error">{e(error)}</p>'
    if chart_svg is not None:
        body += (
            f'<p class="summary">{e(summary)}</p><div class="chart-box">{chart_svg}</div>'
            + legend_html()
            + "<h2>Latest points</h2>"
            + table(
                ["time", "value", "class", "reason", "config version", "transport"],
                (
                    [
                        when(p["time"]),
                        e(f"{p['value']:.6g}"),
                        badge(p["cls"]),
                        e(p["reason"]),
                        e(p["config_version"]),
                        e(p["transport"]),
                    ]
                    for p in latest
                ),
                "no point in this range",
                "points",
            )
            + "<h2>Alerts in this range</h2>"
            + alerts_table(alerts, with_stream=False)
            + "<h2>Predictions</h2>"
            + table(
                ["as of", "model", "predicted", "anomaly score", "anomaly", "explanation"],
                (
                    [
                        when(p["as_of"]),
                        e(p["model"]),
                        e(p["predicted_value"]),
                        e(p["anomaly_score"]),
                        "yes" if p["is_anomaly"] else "no",
                        e((p.get("explanation") or {}).get("text", "")),
                    ]
                    for p in predictions
                ),
                "no prediction for this stream",
            )
        )
    body += "<h2>Streams with points in the last 24 h</h2>" + table(
        ["stream", "latest point", "value", "class", "points"],
        (
            [
                stream_link(s["domain"], s["source_id"], s["stream_id"]),
                when(s["last_time"]),
                e(f"{s['last_value']:.6g}"),
                badge(s["last_cls"]),
                f"{s['points']:,}",
            ]
            for s in recent
        ),
        "no stream has points in the last 24 h",
    )
    return layout("Stream explorer", body, active="streams", who=who)


def alerts_table(alerts: Sequence[dict[str, Any]], with_stream: bool = True) -> str:
    headers = ["stream"] if with_stream else []
    headers += ["severity", "status", "rule", "reason", "opened", "closed", "peak", "violations"]
    rows = []
    for a in alerts:
        row = [stream_link(a["domain"], a["source_id"], a["stream_id"])] if with_stream else []
        row += [
            badge(a["severity"]),
            e(a["status"]),
            e(a["rule"]),
            e(a["reason"]),
            when(a["opened_at"]),
            when(a["closed_at"]),
            e(a["peak_value"]),
            e(a["violation_count"]),
        ]
        rows.append(row)
    return table(headers, rows, "no alert", "alerts")


def alerts_page(
    open_alerts: Sequence[dict[str, Any]],
    history: Sequence[dict[str, Any]],
    next_cursor: str | None,
    who: str,
) -> str:
    more = (
        f'<p><a href="/console/alerts?{e(urlencode({"cursor": next_cursor}))}">older →</a></p>'
        if next_cursor
        else ""
    )
    body = (
        f"<h2>Open now ({len(open_alerts)})</h2>"
        + alerts_table(open_alerts)
        + "<h2>History</h2>"
        + alerts_table(history)
        + more
    )
    return layout("Alerts", body, active="alerts", who=who, refresh=10)


def progress(job: dict[str, Any]) -> str:
    pct = float(job.get("percent") or 0.0)
    return (
        f'<div class="progress" data-job="{e(job["job_id"])}"><div class="bar" '
        f'style="width:{pct:.1f}%"></div><span class="pct">{pct:.1f} %</span></div>'
    )


def jobs_page(jobs: Sequence[dict[str, Any]], who: str) -> str:
    rows = (
        [
            f'<code title="{e(j["job_id"])}">{e(str(j["job_id"])[:12])}…</code>',
            e(j["filename"]),
            e(j["domain"]),
            e(j["source_id"] or "(per row)"),
            f'<span class="status">{e(j["status"])}</span>',
            progress(j),
            f'<span class="rows">{j.get("rows_processed") or 0:,} / {j.get("rows_total") or 0:,}'
            "</span>",
            f'<span class="published">{j.get("points_published") or 0:,}</span>',
            f'<span class="errors">{j.get("error_count") or 0:,}</span>',
            when(j["created_at"]),
        ]
        for j in jobs
    )
    body = (
        "<p>Progress refreshes every second. Upload with "
        "<code>tributary csv upload FILE --source S --domain D --wait</code> or "
        "<code>POST /ingest/csv</code> on csv-importer.</p>"
        + table(
            [
                "job",
                "file",
                "domain",
                "source",
                "status",
                "progress",
                "rows",
                "points",
                "errors",
                "created",
            ],
            rows,
            "no CSV job",
            "jobs",
        )
    )
    return layout("CSV jobs", body, active="jobs", who=who)


def scope_query(item: dict[str, Any]) -> str:
    return urlencode({k: item[k] for k in ("domain", "source_id", "stream_id")})


def configs_page(configs: Sequence[dict[str, Any]], who: str, is_admin: bool) -> str:
    rows = (
        [
            f'<a href="/console/configs/edit?{e(scope_query(c))}">'
            f"{e(c['domain'])}/{e(c['source_id'])}/{e(c['stream_id'])}</a>",
            e(c["version"]),
            e(c["summary"]),
        ]
        for c in configs
    )
    new = (
        '<h2>New config</h2><form method="get" action="/console/configs/edit" class="inline">'
        '<label>domain <input name="domain" required></label> '
        '<label>source <input name="source_id" value="*" required></label> '
        '<label>stream <input name="stream_id" required></label> <button>Edit</button></form>'
        if is_admin
        else "<p>Only admin keys may change configs; this key reads them.</p>"
    )
    body = (
        table(
            ["scope (domain/source/stream)", "version", "limits"], rows, "no stream config stored"
        )
        + new
    )
    return layout("Stream configs", body, active="configs", who=who)


def editor_page(
    *,
    who: str,
    scope: dict[str, str],
    document: str,
    version: int | None,
    is_admin: bool,
    problems: Sequence[dict[str, str]] = (),
    saved: str = "",
    error: str = "",
) -> str:
    hidden = "".join(f'<input type="hidden" name="{k}" value="{e(v)}">' for k, v in scope.items())
    notes = ""
    if saved:
        notes += f'<p class="saved">{e(saved)}</p>'
    if error:
        notes += f'<p class="error">{e(error)}</p>'
    if problems:
        notes += (
            '<ul class="problems">'
            + "".join(f"<li><code>{e(p['field'])}</code>: {e(p['message'])}</li>" for p in problems)
            + "</ul>"
        )
    action = (
        '<button name="save" value="1">Save</button> <small>validated with the StreamConfig '
        "model; the classifier applies it to the next point</small>"
        if is_admin
        else "<p>Read only: only admin keys may change configs.</p>"
    )
    body = (
        f"<p>Scope <code>{e(scope['domain'])}/{e(scope['source_id'])}/{e(scope['stream_id'])}"
        f"</code> · version {e(version) if version else 'none stored'}</p>{notes}"
        f'<form method="post" action="/console/configs/edit" class="editor">{hidden}'
        f'<input type="hidden" name="version" value="{version or 0}">'
        f'<textarea name="config" rows="22" cols="90" spellcheck="false"'
        f"{'' if is_admin else ' readonly'}>{e(document)}</textarea><br>{action}</form>"
    )
    return layout("Stream config", body, active="configs", who=who)


def error_page(status: int, message: str, who: str = "") -> str:
    return layout(f"Error {status}", f'<p class="error">{e(message)}</p>', who=who)
