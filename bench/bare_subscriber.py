"""The drain baseline: a bare paho subscriber of the same shape as ingestion, doing nothing else.

MQTT v5, QoS 1, persistent session (``clean_start=False``, session expiry), the same shared
subscription and Receive Maximum as ``citytel ingest``, manual acknowledgement; but each message
is acknowledged as soon as it arrives and then discarded. Prints one JSON line.

    python -m bench.bare_subscriber --port 1883 --root bench/x --client-id b1 --expect 200000
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode


class _Counter:
    def __init__(self, client: mqtt.Client, expect: int) -> None:
        self.client = client
        self.expect = expect
        self.received = 0
        self.first = 0.0
        self.last = 0.0
        self.subscribed = threading.Event()
        self.done = threading.Event()

    def on_connect(
        self, client: mqtt.Client, _u: Any, _f: Any, code: ReasonCode, _p: Properties | None
    ) -> None:
        if not code.is_failure:
            client.subscribe(self.topic, qos=1)

    def on_subscribe(self, *_args: Any) -> None:
        self.subscribed.set()

    def on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        self.client.ack(message.mid, message.qos)
        now = time.time()
        if not self.received:
            self.first = now
        self.received += 1
        self.last = now
        if self.received >= self.expect:
            self.done.set()

    topic = ""


def main(argv: list[str] | None = None) -> int:
    """Drain (or, with ``--expect 0``, only create) the session; print what it took."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--group", default="citytel")
    parser.add_argument("--expect", type=int, default=0)
    parser.add_argument("--receive-maximum", type=int, default=4000)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)

    started = time.time()
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=args.client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=True,
    )
    counter = _Counter(client, args.expect)
    counter.topic = f"$share/{args.group}/{args.root}/+/+/+"
    client.on_connect = counter.on_connect
    client.on_subscribe = counter.on_subscribe
    client.on_message = counter.on_message
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 3600
    properties.ReceiveMaximum = args.receive_maximum
    client.connect("127.0.0.1", args.port, keepalive=30, clean_start=False, properties=properties)
    client.loop_start()
    try:
        if args.expect == 0:
            ok = counter.subscribed.wait(args.timeout)
        else:
            ok = counter.done.wait(args.timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    result = {
        "ok": ok,
        "received": counter.received,
        "started": started,
        "first": counter.first,
        "last": counter.last,
    }
    sys.stdout.write(json.dumps(result) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
