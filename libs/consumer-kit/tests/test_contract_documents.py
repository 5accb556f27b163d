"""The checked-in contract documents match the models, are well-formed, and validate real
messages; the ``/asyncapi`` page renders them."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest
import yaml
from starlette.applications import Starlette

from tributary_consumer_kit.asyncapi import (
    PARAMETERS,
    asyncapi_document,
    channels,
    generated_files,
    json_schemas,
    main,
    stale_files,
)
from tributary_consumer_kit.page import asyncapi_html, asyncapi_routes
from tributary_contracts import (
    CONSUMERS,
    CONTRACT_VERSION,
    ClassifiedBatch,
    ClassifiedBundle,
    Namespace,
    PointBatch,
    PointBundle,
    StreamConfig,
    classifier_partition_durable,
)
from tributary_contracts.jetstream import BUCKETS, STREAMS

DOCS = Path(__file__).resolve().parents[3] / "docs"
T0 = datetime(2026, 2, 25, 21, 0, tzinfo=UTC)


def test_checked_in_documents_match_the_models() -> None:
    # The drift check: a model, subject or description changed without `make contract-docs`.
    assert stale_files(DOCS) == [], "run `make contract-docs` and commit docs/"


def test_drift_check_names_a_document_that_differs(tmp_path: Path) -> None:
    for rel, text in generated_files().items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert main(["--docs", str(tmp_path), "--check"]) == 0
    schema = tmp_path / "schemas" / "ClassifiedBundle.json"
    schema.write_text(schema.read_text().replace('"partition"', '"part"'))
    (tmp_path / "schemas" / "Gone.json").write_text("{}")
    assert stale_files(tmp_path) == ["schemas/ClassifiedBundle.json", "schemas/Gone.json"]
    assert main(["--docs", str(tmp_path), "--check"]) == 1
    assert main(["--docs", str(tmp_path)]) == 0
    assert stale_files(tmp_path) == []
    assert not (tmp_path / "schemas" / "Gone.json").exists()


def test_asyncapi_document_is_version_3_with_the_contract_version() -> None:
    doc = yaml.safe_load((DOCS / "asyncapi.yaml").read_text())
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["version"] == CONTRACT_VERSION


def test_every_channel_address_comes_from_the_namespace_builders() -> None:
    doc = asyncapi_document()
    ns = Namespace()
    addresses = {name: ch["address"] for name, ch in doc["channels"].items()}
    assert addresses["classifiedBundle"] == ns.classified_partition_subject(
        "{domain}",
        "{cls}",
        "{partition}",  # type: ignore[arg-type]
    )
    assert addresses["rawBundle"] == "dp.raw.{domain}.part.{partition}"
    assert addresses["classifiedBundle"] == "dp.classified.{domain}.{cls}.part.{partition}"
    assert set(addresses) == {c.name for c in channels()}


def test_every_address_parameter_is_declared_and_every_ref_resolves() -> None:
    doc = asyncapi_document()
    for name, channel in doc["channels"].items():
        names = re.findall(r"\{(\w+)\}", channel["address"])
        assert names, name
        assert list(channel["parameters"]) == names, name
        assert all(p in PARAMETERS for p in names)
    refs = re.findall(r'"\$ref": "#/([^"]+)"', json.dumps(doc))
    assert refs
    for ref in refs:
        node: Any = doc
        for part in ref.split("/"):
            assert part in node, f"unresolved $ref #/{ref}"
            node = node[part]


def test_classified_bundle_message_documents_its_payload_and_msg_id() -> None:
    doc = asyncapi_document()
    message = doc["components"]["messages"]["classifiedBundle:Message"]
    assert message["payload"] == {"$ref": "#/components/schemas/ClassifiedBundle"}
    assert "Nats-Msg-Id" in message["headers"]["properties"]
    assert "correlationId" not in message
    bundle = doc["components"]["schemas"]["ClassifiedBundle"]
    assert bundle["required"] == ["domain", "cls", "partition", "batches"]


def _classified_batch(source: str) -> ClassifiedBatch:
    return ClassifiedBatch.model_validate(
        {"domain": "infrastructure", "source_id": source, "transport": "mqtt",
         "received_at": T0, "cls": "warning", "classified_at": T0,
         "points": [{"stream_id": "cpu_usage", "value": 88.0, "ts": T0, "reason": "above 85",
                     "rule": "warning_max", "config_version": 2, "metadata": {"core": 0}}]}
    )  # fmt: skip


def _point_batch(source: str) -> PointBatch:
    return PointBatch.model_validate(
        {"domain": "iot", "source_id": source, "transport": "http", "received_at": T0,
         "points": [{"stream_id": "17", "value": 21.5, "ts": T0, "legacy": {"sensor_id": 17}}]}
    )  # fmt: skip


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (
            "ClassifiedBundle.json",
            ClassifiedBundle(
                domain="infrastructure",
                cls="warning",  # type: ignore[arg-type]
                partition=1,
                batches=[_classified_batch("server-01"), _classified_batch("a.b c")],
            ),
        ),
        ("ClassifiedBatch.json", _classified_batch("server-01")),
        ("PointBundle.json", PointBundle(domain="iot", partition=0, batches=[_point_batch("d")])),
        ("PointBatch.json", _point_batch("d")),
        (
            "StreamConfig.json",
            StreamConfig.model_validate(
                {
                    "value_constraints": {"min_value": 0, "max_value": 100, "warning_max": 85},
                    "consecutive_violations_required": 3,
                }
            ),
        ),
    ],
)
def test_json_schemas_accept_real_messages(schema: str, message: Any) -> None:
    validator = jsonschema_rs.validator_for(json.loads((DOCS / "schemas" / schema).read_text()))
    body = json.loads(message.model_dump_json())
    errors = [e.message for e in validator.iter_errors(body)]
    assert errors == []


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda b: b.pop("partition"), "partition"),
        (lambda b: b.update(cls="hot"), "hot"),
        (lambda b: b["batches"][0]["points"][0].update(value="x"), '"x"'),
        (lambda b: b.update(extra=1), "extra"),
    ],
)
def test_json_schema_refuses_what_the_model_refuses(mutate: Any, expected: str) -> None:
    validator = jsonschema_rs.validator_for(json_schemas()["ClassifiedBundle.json"])
    body = json.loads(
        ClassifiedBundle(
            domain="infrastructure",
            cls="warning",  # type: ignore[arg-type]
            partition=1,
            batches=[_classified_batch("s")],
        ).model_dump_json()
    )
    mutate(body)
    errors = [e.message for e in validator.iter_errors(body)]
    assert errors and expected in " ".join(errors)
    with pytest.raises(ValueError):
        ClassifiedBundle.model_validate(body)


def test_page_lists_every_channel_and_schema() -> None:
    doc = asyncapi_document()
    page = asyncapi_html(doc)
    for channel in doc["channels"].values():
        assert f"<code>{channel['address']}</code>" in page
    for name in doc["components"]["schemas"]:
        assert f'id="schema-{name}"' in page
    assert "<script" not in page


async def test_routes_serve_the_page_and_the_document() -> None:
    app = Starlette(routes=asyncapi_routes())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://console") as client:
        page = await client.get("/asyncapi")
        as_json = await client.get("/asyncapi.json")
        as_yaml = await client.get("/asyncapi.yaml")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "dp.classified.{domain}.{cls}.part.{partition}" in page.text
    assert as_json.json() == asyncapi_document()
    assert as_yaml.text == (DOCS / "asyncapi.yaml").read_text()


def test_every_subject_builder_has_a_channel() -> None:
    # A new subject in libs/contracts must get a channel (and so a place in asyncapi.yaml).
    builders = {n for n in dir(Namespace) if n.endswith("_subject") and not n.startswith("_")}
    documented = {c.builder for c in channels()}
    assert builders - documented == set(), "add a Channel in tributary_consumer_kit.asyncapi"


def test_every_stream_has_a_channel() -> None:
    addresses = [c.address for c in channels()]
    for stream in STREAMS:
        for pattern in stream.subjects:
            head = pattern.removesuffix(">")
            assert any(a.startswith(head) for a in addresses), (stream.base, pattern)


def test_the_prose_contract_names_every_stream_bucket_and_durable() -> None:
    text = (DOCS / "contract.md").read_text()
    names = [s.base for s in STREAMS] + [b for b, _, _ in BUCKETS] + list(CONSUMERS)
    names += [classifier_partition_durable(0).replace("0", "<p>")]
    missing = [n for n in names if f"`{n}`" not in text]
    assert missing == [], "docs/contract.md does not name these"
