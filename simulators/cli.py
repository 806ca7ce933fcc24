"""``citytel simulate``: drive the demo fleet against a broker."""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from simulators.fleet import load_fleet
from simulators.publisher import PublishError, publish
from simulators.stream import Format, StreamConfig, history_for, simulate

if TYPE_CHECKING:
    from citytel.config import Settings


def _ratio(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        message = f"{text} is not a ratio between 0 and 1"
        raise argparse.ArgumentTypeError(message)
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        message = f"{text} is not a positive number"
        raise argparse.ArgumentTypeError(message)
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:
        message = f"{text} is not a number of seconds"
        raise argparse.ArgumentTypeError(message)
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        message = f"{text} is not a positive whole number"
        raise argparse.ArgumentTypeError(message)
    return value


# The command line's names for the formats, as people call the network servers.
FORMATS: dict[str, Format] = {
    "native": "native",
    "ttn": "ttn",
    "chirpstack": "chirpstack_v4",
    "chirpstack-v3": "chirpstack_v3",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's options to ``parser``."""
    parser.add_argument("--fleet", help="fleet GeoJSON file (default: the configured fleet file)")
    parser.add_argument("--containers", type=_count, help="simulate the first N containers (all)")
    parser.add_argument("--spots", type=_count, help="simulate the first N spots (all)")
    parser.add_argument("--rate", type=_positive, default=200.0, help="messages per second (200)")
    parser.add_argument(
        "--duration", type=_seconds, default=0.0, help="seconds to run (0: forever)"
    )
    parser.add_argument("--count", type=_count, help="stop after N messages")
    parser.add_argument("--seed", type=int, default=2026, help="random seed (2026)")
    parser.add_argument(
        "--speedup",
        type=_positive,
        default=60.0,
        help="simulated seconds per wall-clock second (60)",
    )
    parser.add_argument(
        "--gateways",
        type=_count,
        default=4,
        help="radio gateways in LoRaWAN envelopes (native readings use each device's own)",
    )
    for fault in ("malformed", "duplicate", "out-of-order"):
        parser.add_argument(
            f"--{fault}-ratio", type=_ratio, default=0.0, help=f"share of {fault} messages (0)"
        )
    parser.add_argument(
        "--format",
        choices=list(FORMATS),
        default="native",
        help="citytel's own JSON, or each sensor's bytes in a network server's envelope "
        "(ttn: The Things Stack v3; chirpstack: ChirpStack v4; chirpstack-v3) (native)",
    )
    parser.add_argument(
        "--network-decoded-ratio",
        type=_ratio,
        default=0.0,
        help="share of LoRaWAN uplinks that also carry the network server's decoded object (0)",
    )
    parser.add_argument(
        "--network-application",
        default="citytel-casablanca",
        help="network server application of the sensors (citytel-casablanca)",
    )
    parser.add_argument(
        "--network-tenant", default="ttn", help="The Things Stack tenant; empty for none (ttn)"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Publish the simulated stream; 0 when every message was acknowledged."""
    fleet_file = args.fleet or settings.fleet_file
    try:
        fleet = load_fleet(fleet_file).head(args.containers, args.spots)
    except OSError as exc:
        sys.stderr.write(f"simulate: cannot read the fleet file {fleet_file}: {exc}\n")
        return 2
    seconds = [s for s in (args.duration, args.count and args.count / args.rate) if s]
    config = StreamConfig(
        seed=args.seed,
        rate=args.rate,
        speedup=args.speedup,
        history=history_for(min(seconds, default=None), args.speedup),
        gateways=args.gateways,
        topic_root=settings.mqtt_topic_root,
        malformed_ratio=args.malformed_ratio,
        duplicate_ratio=args.duplicate_ratio,
        out_of_order_ratio=args.out_of_order_ratio,
        format=FORMATS[args.format],
        network_decoded_ratio=args.network_decoded_ratio,
        network_application=args.network_application,
        network_tenant=args.network_tenant,
    )
    try:
        messages = simulate(fleet, datetime.now(UTC), config)
    except ValueError as exc:
        sys.stderr.write(f"simulate: {exc}\n")
        return 2
    host, port = settings.mqtt_host_port
    password = settings.mqtt_password.get_secret_value() if settings.mqtt_password else None
    try:
        stats = publish(
            itertools.islice(messages, args.count),
            host=host,
            port=port,
            username=settings.mqtt_username,
            password=password,
            client_id=f"citytel-simulator-{os.getpid()}",
            duration_s=args.duration or None,
        )
    except PublishError as exc:
        sys.stderr.write(f"simulate: {exc}\n")
        return 1
    kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(stats.by_kind.items()))
    sys.stdout.write(
        f"published {stats.published} messages ({kinds}) in {stats.elapsed_s:.1f} s; "
        f"{stats.acknowledged} acknowledged, {stats.refused} refused"
        f"{' (interrupted)' if stats.interrupted else ''}\n"
    )
    return 0 if stats.complete else 1
