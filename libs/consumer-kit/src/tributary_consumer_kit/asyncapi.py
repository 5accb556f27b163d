"""The bus contract as documents generated from ``libs/contracts``: AsyncAPI 3 and JSON Schemas.

Every channel's address is built with ``Namespace()``'s own subject builders (placeholders in
braces for the variable tokens) and every payload is a ``tributary_contracts`` model, given to
FastStream's AsyncAPI generator as a documented publisher of the fleet. The generated document is
completed with what FastStream does not know: the channel parameters (AsyncAPI 3 requires one per
``{name}`` in an address) and the headers each message carries (``Nats-Msg-Id``, dead-letter
headers).

``python -m tributary_consumer_kit.asyncapi`` (``make contract-docs``) rewrites
``docs/asyncapi.yaml`` and ``docs/schemas/*.json``; ``--check`` exits 1 naming the stale files
(the drift test in ``libs/consumer-kit/tests`` does the same in ``make test``).
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from faststream.nats import NatsBroker
from faststream.specification import AsyncAPI
from pydantic import BaseModel

from tributary_contracts import (
    CONTRACT_VERSION,
    DLQ_CONSUMER,
    DLQ_DELIVERIES,
    DLQ_KIND,
    DLQ_REASON,
    DLQ_SUBJECT,
    MSG_ID_HEADER,
    AlertEvent,
    AuditEvent,
    ClassifiedBatch,
    ClassifiedBundle,
    Namespace,
    PointBatch,
    PointBundle,
    PointClass,
    PredictionBatch,
    RawRecord,
    RejectedInput,
    Severity,
    ShadowBatch,
    StreamConfig,
    Transport,
)
from tributary_contracts.models import DOMAIN_PATTERN

TITLE = "Tributary bus"
DESCRIPTION = (
    "Messages on the NATS JetStream of a Tributary fleet. Gateways publish normalised points "
    "(PointBundle), the classifier publishes classified points (ClassifiedBundle) and alert "
    "events, ml-batch publishes predictions; downstream consumers read the classified, alert "
    "and prediction channels with their own durable consumers. JSON bodies; every subject is "
    "under `<BUS_PREFIX>.` when the fleet sets a namespace prefix. The prose contract "
    "(streams, consumers, buckets, ack and idempotency rules, versioning) is docs/contract.md."
)

PARAMETERS: dict[str, dict[str, Any]] = {
    "domain": {
        "description": f"Domain of the sources: lower case, {DOMAIN_PATTERN} "
        "(iot, infrastructure, finance, health, …).",
        "examples": ["infrastructure", "iot"],
    },
    "cls": {
        "description": "Class every point of the message has.",
        "enum": [c.value for c in PointClass],
    },
    "partition": {
        "description": "Bus partition, 0..BUS_PARTITIONS-1 (default 4): "
        "partition_of(domain, source_id, BUS_PARTITIONS), FNV-1a 32 of the domain and the "
        "escaped source token, modulo the count. A source always maps to the same partition.",
        "examples": ["0", "3"],
    },
    "source": {
        "description": "Source id as one subject token: '.', '*', '>', whitespace, '%' and "
        "control characters escaped as %XX (UTF-8 bytes); the original id is in the payload.",
        "examples": ["server-01", "BTC%2EUSDT"],
    },
    "severity": {
        "description": "Severity of the alert.",
        "enum": [s.value for s in Severity],
    },
    "transport": {
        "description": "Gateway that refused the input.",
        "enum": [t.value for t in Transport],
    },
    "consumer": {
        "description": "Durable name of the consumer that gave up (classifier-part-<n>, "
        "writer-postgres, writer-sqlserver, writer-postgres-alerts, …).",
        "examples": ["writer-postgres"],
    },
    "service": {
        "description": "Service that recorded the event (gateway-http, gateway-ws, "
        "csv-importer, cli).",
        "examples": ["gateway-http"],
    },
    "action": {
        "description": "What happened (AuditAction: auth_failed, access_denied, key_created…).",
        "examples": ["auth_failed"],
    },
}

_DEDUP = "JetStream deduplicates a repeat within the stream's duplicate window (120 s)."
_DLQ_HEADERS = {
    DLQ_CONSUMER: "Durable name of the consumer that gave up.",
    DLQ_KIND: "Bounded label: invalid_message, max_deliver, bad_rows, …",
    DLQ_REASON: "Human sentence, one line, at most 1000 characters.",
    DLQ_SUBJECT: "Subject the message was read from (where a replay republishes it).",
    DLQ_DELIVERIES: "Deliveries of the message before the consumer gave up.",
    MSG_ID_HEADER: "SHA-256 of consumer, kind, reason, subject and body (for a writer's "
    "bad_rows: of the refused points' batch_msg_id): a dead letter published twice is stored "
    "once.",
}


@dataclass(frozen=True)
class Channel:
    """One documented subject family: its address, payload model and headers."""

    name: str
    builder: str
    """The ``Namespace`` method that builds the address (a test checks every builder is used)."""
    address: str
    payload: type[BaseModel] | None
    description: str
    headers: dict[str, str] = field(default_factory=dict)


def channels(ns: Namespace = Namespace()) -> tuple[Channel, ...]:
    """Every channel of the bus, addresses from ``ns``'s subject builders."""
    domain, cls, part, source = "{domain}", "{cls}", "{partition}", "{source}"
    return (
        Channel(
            "rawBundle",
            "raw_partition_subject",
            ns.raw_partition_subject(domain, part),  # type: ignore[arg-type]
            PointBundle,
            "Normalised, unclassified points of many sources of one domain and partition, "
            "coalesced by a gateway (stream DP_RAW). Read by the classifier's durable "
            "classifier-part-<n> (filter dp.raw.*.part.<n>). A gateway answers its producers "
            "only after the PubAck of the bundle holding their points.",
            {
                MSG_ID_HEADER: "bundle_msg_id of the inner batches' batch_msg_id, in order. "
                + _DEDUP
            },
        ),
        Channel(
            "rawBatchFormer",
            "raw_subject",
            ns.raw_subject(domain, source),
            PointBatch,
            "Former (contract 1.x) subject: one source's batch per message. No longer "
            "published; the classifier drains what a stream still holds during the upgrade.",
            {MSG_ID_HEADER: "batch_msg_id of the batch. " + _DEDUP},
        ),
        Channel(
            "classifiedBundle",
            "classified_partition_subject",
            ns.classified_partition_subject(domain, cls, part),  # type: ignore[arg-type]
            ClassifiedBundle,
            "Classified points of many sources of one domain, class and partition (stream "
            "DP_CLASSIFIED). Downstream consumers filter domain and class on the server "
            "(dp.classified.<domain>.<cls>.>) and sources on the client "
            "(tributary_contracts.iter_readings); a point's idempotency key is point_key "
            "(domain, source_id, stream_id, ts).",
            {
                MSG_ID_HEADER: "bundle_msg_id of the inner batches' batch_msg_id (with their "
                "class), in order. " + _DEDUP
            },
        ),
        Channel(
            "classifiedBatchFormer",
            "classified_subject",
            ns.classified_subject(domain, cls, source),
            ClassifiedBatch,
            "Former (contract 1.x) subject: one source's classified batch per message. No "
            "longer published; still matched by dp.classified.<domain>.<cls>.> and decoded by "
            "tributary_contracts.decode_classified while a stream retains such messages.",
            {MSG_ID_HEADER: "batch_msg_id of the batch, with its class. " + _DEDUP},
        ),
        Channel(
            "alert",
            "alert_subject",
            ns.alert_subject(domain, "{severity}", source),
            AlertEvent,
            "Alert lifecycle events from the classifier (stream DP_EVENTS): opened, escalated, "
            "closed. At most one alert is open per stream.",
            {MSG_ID_HEADER: "<alert_id>:<event>: a redelivered input never repeats an event."},
        ),
        Channel(
            "prediction",
            "prediction_subject",
            ns.prediction_subject(domain, source),
            PredictionBatch,
            "ml-batch's forecasts and anomaly scores of the streams of one source "
            "(stream DP_EVENTS).",
            {MSG_ID_HEADER: "prediction_msg_id of its (stream_id, model, as_of) keys."},
        ),
        Channel(
            "rejected",
            "rejected_subject",
            ns.rejected_subject("{transport}"),
            RejectedInput,
            "Input a gateway could not accept, with reasons and excerpts (stream DP_REJECTED).",
        ),
        Channel(
            "shadow",
            "shadow_subject",
            ns.shadow_subject(domain, source),
            ShadowBatch,
            "Canary rollouts: the live and the candidate verdict of each point of a source in "
            "a rollout (stream DP_SHADOW), published by the classifier before it acks the input; "
            "writer-postgres stores them in rollout_verdicts (durable writer-postgres-shadow).",
        ),
        Channel(
            "ledger",
            "ledger_subject",
            ns.ledger_subject("{transport}"),
            RawRecord,
            "The opt-in raw ledger (setting RAW_LEDGER on the gateways): each selected input as "
            "received and what came of it (stream DP_LEDGER); writer-postgres stores raw_record "
            "and ingest_error (durable writer-postgres-ledger).",
            {MSG_ID_HEADER: "record_id."},
        ),
        Channel(
            "deadLetter",
            "dlq_subject",
            ns.dlq_subject("{consumer}"),
            None,
            "Messages a consumer gave up on (stream DP_DLQ): the refused body unchanged (or, "
            "for rows a database refused, a bundle of just those points); why in the headers. "
            "`tributary dlq replay` republishes to the original subject.",
            _DLQ_HEADERS,
        ),
        Channel(
            "audit",
            "audit_subject",
            ns.audit_subject("{service}", "{action}"),
            AuditEvent,
            "Security audit events (stream AUDIT), stored in ingestion_audit_log.",
            {MSG_ID_HEADER: "event_id: a retry stores one row."},
        ),
    )


def documentation_broker(ns: Namespace = Namespace()) -> NatsBroker:
    """A broker that is never connected: it only declares the fleet's publishers for the
    AsyncAPI generator."""
    broker = NatsBroker(
        "nats://127.0.0.1:4222",
        description="The fleet's NATS JetStream (setting NATS_URL).",
    )
    for channel in channels(ns):
        broker.publisher(
            channel.address,
            title=channel.name,
            description=channel.description,
            schema=channel.payload,
        )
    return broker


def asyncapi_document(ns: Namespace = Namespace()) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of the bus, as plain JSON data."""
    spec = AsyncAPI(
        documentation_broker(ns),
        title=TITLE,
        version=CONTRACT_VERSION,
        description=DESCRIPTION,
        schema_version="3.0.0",
    ).to_specification()
    doc: dict[str, Any] = json.loads(spec.to_json())
    by_name = {c.name: c for c in channels(ns)}
    for name, channel in doc["channels"].items():
        names = re.findall(r"\{(\w+)\}", channel["address"])
        channel["parameters"] = {p: copy.deepcopy(PARAMETERS[p]) for p in names}
        headers = by_name[name].headers
        message = doc["components"]["messages"][f"{name}:Message"]
        # FastStream's own correlation header is not part of this contract.
        message.pop("correlationId", None)
        if headers:
            message["headers"] = {
                "type": "object",
                "properties": {h: {"type": "string", "description": d} for h, d in headers.items()},
            }
    # In the order of ``channels()`` whatever order the generator keeps them in.
    for section in ("channels", "operations"):
        doc[section] = {name: doc[section][name] for name in by_name}
    components = doc["components"]
    components["messages"] = {
        f"{name}:Message": components["messages"][f"{name}:Message"] for name in by_name
    }
    components["schemas"] = dict(sorted(components["schemas"].items()))
    dead_letter = doc["components"]["schemas"].get("deadLetter:Message:Payload")
    if dead_letter is not None:
        dead_letter["description"] = "The refused message body, byte for byte."
    return doc


def asyncapi_yaml(ns: Namespace = Namespace()) -> str:
    """``asyncapi_document`` as YAML (the checked-in ``docs/asyncapi.yaml``)."""
    text: str = yaml.safe_dump(
        asyncapi_document(ns), sort_keys=False, allow_unicode=True, width=100
    )
    return text


SCHEMA_MODELS: tuple[type[BaseModel], ...] = (
    PointBundle,
    PointBatch,
    ClassifiedBundle,
    ClassifiedBatch,
    AlertEvent,
    PredictionBatch,
    RejectedInput,
    ShadowBatch,
    RawRecord,
    AuditEvent,
    StreamConfig,
)
"""Models with a JSON Schema of their own in ``docs/schemas`` (the bus payloads and the stream
configuration kept in the ``stream-configs`` bucket and sent to the config API)."""


def json_schemas() -> dict[str, dict[str, Any]]:
    """File name → JSON Schema (draft 2020-12) of every model of ``SCHEMA_MODELS``."""
    out: dict[str, dict[str, Any]] = {}
    for model in SCHEMA_MODELS:
        schema = model.model_json_schema(mode="validation")
        out[f"{model.__name__}.json"] = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"{model.__name__}.json",
            "x-contract-version": CONTRACT_VERSION,
            **schema,
        }
    return out


def generated_files() -> dict[str, str]:
    """Path relative to ``docs/`` → content, for every generated contract document."""
    files = {"asyncapi.yaml": asyncapi_yaml()}
    for name, schema in json_schemas().items():
        files[f"schemas/{name}"] = json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
    return files


def stale_files(docs: Path) -> list[str]:
    """Generated documents under ``docs`` that are missing or differ from the models, plus
    files in ``docs/schemas`` no model generates."""
    files = generated_files()
    stale = [
        rel for rel, text in files.items()
        if not (docs / rel).is_file() or (docs / rel).read_text() != text
    ]  # fmt: skip
    schemas_dir = docs / "schemas"
    if schemas_dir.is_dir():
        stale += [
            f"schemas/{p.name}"
            for p in sorted(schemas_dir.glob("*.json"))
            if f"schemas/{p.name}" not in files
        ]
    return stale


def write_files(docs: Path) -> list[str]:
    """Write every generated document under ``docs`` (and remove orphan schemas); returns
    what changed."""
    changed = stale_files(docs)
    files = generated_files()
    for rel in changed:
        path = docs / rel
        if rel in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(files[rel])
        else:
            path.unlink()
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tributary_consumer_kit.asyncapi",
        description="Regenerate docs/asyncapi.yaml and docs/schemas/*.json from libs/contracts.",
    )
    parser.add_argument("--docs", type=Path, default=Path("docs"), help="docs folder (./docs)")
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if a document is stale"
    )
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files(args.docs)
        for rel in stale:
            print(f"stale: {args.docs / rel} (run `make contract-docs`)", file=sys.stderr)
        return 1 if stale else 0
    for rel in write_files(args.docs):
        print(f"wrote {args.docs / rel}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
