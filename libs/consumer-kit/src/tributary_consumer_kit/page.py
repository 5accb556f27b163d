"""The AsyncAPI document as a web page a service can serve at ``/asyncapi``.

``asyncapi_html`` renders the document on the server: plain HTML and CSS, no script and nothing
fetched from elsewhere, so it works on an air-gapped network and in a headless browser test.
``asyncapi_routes`` gives Starlette routes for a service to mount: ``/asyncapi`` (the page),
``/asyncapi.json`` and ``/asyncapi.yaml`` (the document, for tools).
"""

from __future__ import annotations

import html
import json
from typing import Any

from tributary_consumer_kit.asyncapi import asyncapi_document, asyncapi_yaml

_STYLE = """
body{font:15px/1.5 system-ui,sans-serif;margin:2rem auto;max-width:72rem;padding:0 1rem;color:#222}
code,pre{font:13px ui-monospace,monospace}h3 code{font-size:17px}
pre{background:#f6f6f6;padding:.5rem;overflow:auto}
table{border-collapse:collapse;width:100%;margin:.5rem 0 1.5rem}
th,td{border:1px solid #ddd;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f0f3f7}h2{margin-top:2rem;border-bottom:1px solid #ddd}
.muted{color:#666}.req{color:#b00}
"""


def _e(value: object) -> str:
    return html.escape(str(value))


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _type_of(schema: dict[str, Any]) -> str:
    """One-line type of a JSON Schema property: links to named schemas, unions with |."""
    if "$ref" in schema:
        name = _ref_name(schema["$ref"])
        return f'<a href="#schema-{_e(name)}">{_e(name)}</a>'
    if "anyOf" in schema:
        return " | ".join(_type_of(s) for s in schema["anyOf"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_type_of(schema.get('items', {}))}"
    if "enum" in schema:
        return " | ".join(f"<code>{_e(json.dumps(v))}</code>" for v in schema["enum"])
    if "const" in schema:
        return f"<code>{_e(json.dumps(schema['const']))}</code>"
    fmt = f" ({schema['format']})" if "format" in schema else ""
    return _e(f"{kind}{fmt}")


def _constraints(schema: dict[str, Any]) -> str:
    keys = ("pattern", "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum",
            "exclusiveMaximum", "minItems", "maxItems", "default")  # fmt: skip
    parts = [f"{k}: <code>{_e(json.dumps(schema[k]))}</code>" for k in keys if k in schema]
    return "<br>".join(parts)


def _schema_section(name: str, schema: dict[str, Any]) -> str:
    out = [f'<h3 id="schema-{_e(name)}">{_e(name)}</h3>']
    if schema.get("description"):
        out.append(f"<p>{_e(schema['description'])}</p>")
    properties: dict[str, dict[str, Any]] = schema.get("properties", {})
    if properties:
        required = set(schema.get("required", ()))
        out.append(
            "<table><tr><th>field</th><th>type</th><th>constraints</th><th>meaning</th></tr>"
        )
        for field, prop in properties.items():
            mark = ' <span class="req">required</span>' if field in required else ""
            out.append(
                f"<tr><td><code>{_e(field)}</code>{mark}</td><td>{_type_of(prop)}</td>"
                f"<td>{_constraints(prop)}</td><td>{_e(prop.get('description', ''))}</td></tr>"
            )
        out.append("</table>")
    elif "enum" in schema:
        out.append(f"<p>One of {_type_of(schema)}.</p>")
    else:
        out.append(f"<p>{_type_of(schema)}</p>")
    return "\n".join(out)


def asyncapi_html(doc: dict[str, Any] | None = None) -> str:
    """The AsyncAPI document (by default the bus's, ``asyncapi_document()``) as one HTML page:
    servers, channels with their parameters, headers and payload, then every schema."""
    doc = asyncapi_document() if doc is None else doc
    info = doc["info"]
    messages = doc["components"]["messages"]
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{_e(info['title'])} {_e(info['version'])} — AsyncAPI</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{_e(info['title'])} <span class='muted'>contract {_e(info['version'])}</span></h1>",
        f"<p>{_e(info.get('description', ''))}</p>",
        f"<p class='muted'>AsyncAPI {_e(doc['asyncapi'])} · "
        "<a href='asyncapi.json'>asyncapi.json</a> · <a href='asyncapi.yaml'>asyncapi.yaml</a></p>",
        "<h2>Servers</h2><table><tr><th>name</th><th>host</th><th>protocol</th><th>meaning</th></tr>",
    ]
    for name, server in doc.get("servers", {}).items():
        parts.append(
            f"<tr><td>{_e(name)}</td><td><code>{_e(server['host'])}</code></td>"
            f"<td>{_e(server['protocol'])}</td><td>{_e(server.get('description', ''))}</td></tr>"
        )
    parts.append("</table><h2>Channels</h2>")
    for name, channel in doc["channels"].items():
        action = doc.get("operations", {}).get(name, {}).get("action", "")
        parts.append(f'<h3 id="channel-{_e(name)}"><code>{_e(channel["address"])}</code></h3>')
        parts.append(f"<p><span class='muted'>{_e(name)} · fleet {_e(action)}s</span><br>")
        parts.append(f"{_e(channel.get('description', ''))}</p>")
        params = channel.get("parameters", {})
        if params:
            parts.append("<table><tr><th>parameter</th><th>values</th><th>meaning</th></tr>")
            for pname, param in params.items():
                values = param.get("enum") or param.get("examples") or []
                shown = ", ".join(f"<code>{_e(v)}</code>" for v in values)
                parts.append(
                    f"<tr><td><code>{{{_e(pname)}}}</code></td><td>{shown}</td>"
                    f"<td>{_e(param.get('description', ''))}</td></tr>"
                )
            parts.append("</table>")
        for ref in channel.get("messages", {}).values():
            message = messages[_ref_name(ref["$ref"])]
            payload = message.get("payload", {})
            parts.append(f"<p>Payload: {_type_of(payload) if payload else 'bytes'}</p>")
            headers = message.get("headers", {}).get("properties", {})
            if headers:
                parts.append("<table><tr><th>header</th><th>meaning</th></tr>")
                for header, hschema in headers.items():
                    parts.append(
                        f"<tr><td><code>{_e(header)}</code></td>"
                        f"<td>{_e(hschema.get('description', ''))}</td></tr>"
                    )
                parts.append("</table>")
    parts.append("<h2>Schemas</h2>")
    for name, schema in doc["components"].get("schemas", {}).items():
        parts.append(_schema_section(name, schema))
    parts.append("</body></html>")
    return "\n".join(parts)


def asyncapi_routes(path: str = "/asyncapi") -> list[Any]:
    """Starlette routes: ``GET {path}`` (the page), ``{path}.json`` and ``{path}.yaml``.
    The document is generated once, when this is called."""
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    doc = asyncapi_document()
    page = asyncapi_html(doc)
    text = asyncapi_yaml()

    async def html_page(_: Any) -> Response:
        return HTMLResponse(page)

    async def json_doc(_: Any) -> Response:
        return JSONResponse(doc)

    async def yaml_doc(_: Any) -> Response:
        return Response(text, media_type="application/yaml")

    return [
        Route(path, html_page, methods=["GET"]),
        Route(f"{path}.json", json_doc, methods=["GET"]),
        Route(f"{path}.yaml", yaml_doc, methods=["GET"]),
    ]
