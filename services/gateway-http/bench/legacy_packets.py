"""The legacy ``POST /ingest/packets`` path: registry resolution cost and packet throughput.

    python services/gateway-http/bench/legacy_packets.py --rate 100 --seconds 10

1. Registry lookups in process, against the real local NATS KV: ``DeviceRegistry.device`` with
   its TTL cache warm (the hot path: a dict lookup) versus without cache (a KV round trip), and
   the per-reading sensor_uuid → sensor_id resolution on a cached device.
2. Starts ``python -m gateway_http`` on a fresh bus prefix (deleted afterwards), registers
   ``--devices`` devices of ``--sensors`` sensors each, then posts one packet per request (one
   reading per sensor) open-loop at ``--rate`` per second over raw keep-alive connections and
   reports reply latency from each request's due time (a 200 means every PubAck arrived).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from datetime import UTC, datetime, timedelta

import nats
from openloop import drive, drop_namespace, post_request, start_gateway, wait_ready

from tributary_contracts import DEVICES_BUCKET, DP_RAW, Namespace, ensure_jetstream
from tributary_runtime.devices import (
    DeviceRecord,
    DeviceRegistry,
    SensorRecord,
    hash_device_key,
)


def packet_request(key: str, body: object) -> bytes:
    return post_request("/ingest/packets", "X-Device-Key", key, body)


async def lookup_costs(kv: object, device_uuid: str, sensor_uuids: list[str]) -> None:
    cached = DeviceRegistry(kv, cache_seconds=3600)
    await cached.device(device_uuid)
    n = 100_000
    began = time.perf_counter()
    for _ in range(n):
        await cached.device(device_uuid)
    warm = (time.perf_counter() - began) / n
    device = await cached.device(device_uuid)
    assert device is not None
    began = time.perf_counter()
    for _ in range(n // len(sensor_uuids)):
        for sensor_uuid in sensor_uuids:
            device.by_uuid[sensor_uuid]
    per_reading = (time.perf_counter() - began) / (n // len(sensor_uuids) * len(sensor_uuids))
    uncached = DeviceRegistry(kv, cache_seconds=0)
    m = 500
    began = time.perf_counter()
    for _ in range(m):
        await uncached.device(device_uuid)
    cold = (time.perf_counter() - began) / m
    print(
        f"device lookup, cache warm: {warm * 1e6:.2f} µs; without cache (KV get): "
        f"{cold * 1e6:.0f} µs; sensor_uuid → sensor on a cached device: "
        f"{per_reading * 1e9:.0f} ns per reading"
    )


async def run(args: argparse.Namespace) -> None:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    ns = Namespace(prefix)
    nc = await nats.connect(args.nats_url)
    js = nc.jetstream()
    await ensure_jetstream(js, ns)
    kv = await js.key_value(ns.bucket(DEVICES_BUCKET))
    registry = DeviceRegistry(kv)
    devices = []
    sensor_id = 0
    for _ in range(args.devices):
        key = f"dev_{uuid.uuid4().hex}"
        sensors = []
        for _ in range(args.sensors):
            sensor_id += 1
            sensors.append(
                SensorRecord(
                    sensor_uuid=str(uuid.uuid4()), sensor_id=sensor_id, sensor_type="temperature"
                )
            )
        record = DeviceRecord(
            device_uuid=str(uuid.uuid4()), key_sha256=hash_device_key(key), sensors=sensors
        )
        await registry.put_device(record)
        devices.append((record, key))
    server = start_gateway(prefix, args.port, args.nats_url)
    try:
        first, _ = devices[0]
        await lookup_costs(kv, first.device_uuid, [s.sensor_uuid for s in first.sensors])
        await wait_ready(args.port)
        start_ts = datetime(2026, 1, 1, tzinfo=UTC)
        total = int(args.rate * args.seconds)
        requests = []
        for i in range(total):
            record, key = devices[i % len(devices)]
            ts = (start_ts + timedelta(seconds=i)).isoformat()
            body = {
                "device_uuid": record.device_uuid,
                "readings": [
                    {"sensor_uuid": s.sensor_uuid, "value": 20.0 + j % 5, "timestamp": ts}
                    for j, s in enumerate(record.sensors)
                ],
            }
            requests.append(packet_request(key, body))
        replies = await drive(args.port, requests, args.rate, args.connections)
        stored = (await js.stream_info(ns.stream(DP_RAW))).state.messages
        print(replies.report("packets", args.sensors, "readings", stored))
    finally:
        server.terminate()
        server.wait(10)
        await drop_namespace(js, ns)
        await nc.close()

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=int, default=100, help="packets per second")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--sensors", type=int, default=50, help="sensors (readings) per device")
    parser.add_argument("--port", type=int, default=18011)
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections")
    parser.add_argument("--nats-url", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
