"""Single-point QoS 1 messages/s: one gateway process (MQTT → JetStream, PUBACK after the PubAck)
next to a bare paho subscriber (QoS 1, auto-ack, doing nothing), same broker, same run.

    .venv/bin/python services/gateway-mqtt/bench/throughput.py [--messages 20000] [--rounds 5]

To measure the subscriber and not the publishers, each round drains a backlog: the subscriber's
persistent session is created, ``--messages`` single-point messages (10 sources × 1 stream,
distinct timestamps) are queued for it while it is offline, then it connects and the clock runs
from the first message to the last one handled (bare: received; gateway: acked by JetStream, read
from its ``/metrics`` every 50 ms, starting at the last poll that saw nothing received, so the
gateway's figure errs low). Kinds alternate within a round. The bench starts its
own Mosquitto on a free loopback port with ``max_queued_messages 0`` (the local broker's default
of 1000 would drop the backlog) and both subscribers use MQTT 5 with receive maximum 65535.
Prints every round and the medians. Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))  # for tests.*
from tests.host import cpu_seconds, free_port  # noqa: E402
from tests.streams import drop_namespace_at  # noqa: E402

HOST = "127.0.0.1"
BROKER_CONF = """listener {port} 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 0
max_inflight_messages 0
"""


def publish(port: int, prefix: str, start: int, count: int) -> None:
    """Queue ``count`` QoS 1 messages (waits for the broker's PUBACKs)."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{uuid.uuid4().hex[:8]}",
        protocol=paho.MQTTv5,
    )  # fmt: skip
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect(HOST, port)
    client.loop_start()
    infos = []
    for i in range(start, start + count):
        payload = b'{"value": %d, "timestamp": %d}' % (i, 1_772_000_000 + i)
        infos.append(client.publish(f"{prefix}/bench/src-{i % 10}/cpu/data", payload, qos=1))
    for info in infos:
        info.wait_for_publish(timeout=120)
    client.disconnect()
    client.loop_stop()


def bare_subscriber(port: int, prefix: str, count: int, prime: bool) -> None:
    """paho's own loop, QoS 1, auto-ack. ``prime``: only create the session. Otherwise prints
    the wall time of CONNACK and of the last of ``count`` messages."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    from paho.mqtt.subscribeoptions import SubscribeOptions

    received = 0
    first_at = 0.0

    def on_message(c: paho.Client, _u: object, _m: paho.MQTTMessage) -> None:
        nonlocal received, first_at
        received += 1
        if received == 1:
            first_at = time.time()
        if received == count:
            print(f"done {first_at} {time.time()}", flush=True)
            c.disconnect()

    def on_subscribe(c: paho.Client, *_: object) -> None:
        if prime:
            c.disconnect()

    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=f"bench-bare-{prefix}", protocol=paho.MQTTv5
    )
    client.on_message = on_message
    client.on_subscribe = on_subscribe
    props = Properties(PacketTypes.CONNECT)
    props.ReceiveMaximum = 65535
    props.SessionExpiryInterval = 300
    client.connect(HOST, port, clean_start=False, properties=props)
    if prime:
        client.subscribe((f"{prefix}/+/+/+/data", SubscribeOptions(qos=1)))
    client.loop_forever()


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=2) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def queue_backlog(port: int, prefix: str, count: int, publishers: int) -> None:
    share = count // publishers
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--publish", str(port), prefix, str(i * share), str(share)]
        )
        for i in range(publishers)
    ]
    for proc in procs:
        assert proc.wait(timeout=300) == 0


def run_bare(port: int, count: int, publishers: int) -> float:
    prefix = f"bb{uuid.uuid4().hex[:8]}"
    cmd = [sys.executable, __file__, "--bare", str(port), prefix, str(count)]
    subprocess.run([*cmd, "prime"], check=True, timeout=30)
    queue_backlog(port, prefix, count, publishers)
    sub = subprocess.run(cmd, check=True, timeout=300, capture_output=True, text=True)
    _, first, last = sub.stdout.split()
    return count / (float(last) - float(first))


def run_gateway(port: int, count: int, publishers: int) -> tuple[float, float]:
    """(messages/s, µs of the gateway process's CPU per message) over one backlog."""
    prefix = f"bg{uuid.uuid4().hex[:8]}"
    http_port = free_port()
    url = f"http://127.0.0.1:{http_port}"
    env = {
        **os.environ,
        "MQTT_URL": f"mqtt://127.0.0.1:{port}",
        "BUS_PREFIX": prefix,
        "PORT": str(http_port),
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "WARNING",
        "MAX_IN_FLIGHT": "65535",
        "MQTT_SESSION_EXPIRY_SECONDS": "300",
    }
    cmd = [sys.executable, "-m", "gateway_mqtt"]
    first = subprocess.Popen(cmd, env=env, cwd=ROOT)  # creates the session, subscribes
    try:
        wait_ready(url)
    finally:
        first.terminate()
        first.wait(timeout=30)
    queue_backlog(port, prefix, count, publishers)
    gw = subprocess.Popen(cmd, env=env, cwd=ROOT)
    try:
        # t0: the last poll that saw nothing received yet (so the duration is never too short).
        t0 = time.time()
        cpu0 = cpu_seconds(gw.pid)
        deadline = time.monotonic() + 300
        done = 0.0
        while time.monotonic() < deadline:
            now = time.time()
            try:
                received = metric(url, "gateway_mqtt_messages_received_total")
                done = metric(url, "gateway_mqtt_points_published_total")
            except OSError:  # not serving yet
                received = 0.0
            if received == 0:
                t0, cpu0 = now, cpu_seconds(gw.pid)
            if done >= count:
                break
            time.sleep(0.05)
        t_end = time.time()
        cpu = cpu_seconds(gw.pid) - cpu0
        assert done >= count, f"only {done} of {count} points published"
        return count / (t_end - t0), cpu / count * 1e6
    finally:
        gw.terminate()
        gw.wait(timeout=30)
        asyncio.run(
            drop_namespace_at(os.environ.get("NATS_URL", "nats://127.0.0.1:4222"), prefix)
        )


def wait_ready(url: str, poll: float = 0.05) -> float:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/ready", timeout=1):
                return time.time()
        except OSError:
            time.sleep(poll)
    raise RuntimeError("gateway not ready")


def main() -> None:
    if sys.argv[1:2] == ["--publish"]:
        publish(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        return
    if sys.argv[1:2] == ["--bare"]:
        bare_subscriber(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), "prime" in sys.argv)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--publishers", type=int, default=2)
    args = parser.parse_args()
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text(BROKER_CONF.format(port=port))
        broker = subprocess.Popen([mosquitto, "-c", str(conf)], stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        try:
            bare, gateway, cpu = [], [], []
            for round_ in range(1, args.rounds + 1):
                bare.append(run_bare(port, args.messages, args.publishers))
                rate, us = run_gateway(port, args.messages, args.publishers)
                gateway.append(rate)
                cpu.append(us)
                print(
                    f"round {round_}: bare {bare[-1]:8.0f} msg/s   gateway {gateway[-1]:8.0f} "
                    f"msg/s ({us:.0f} µs CPU/message)   ratio {gateway[-1] / bare[-1]:.2f}",
                    flush=True,
                )
        finally:
            broker.terminate()
            broker.wait(timeout=10)
    b, g = statistics.median(bare), statistics.median(gateway)
    print(
        f"median: bare {b:.0f} msg/s, gateway {g:.0f} msg/s "
        f"({statistics.median(cpu):.0f} µs CPU/message), ratio {g / b:.2f}"
    )


if __name__ == "__main__":
    main()
