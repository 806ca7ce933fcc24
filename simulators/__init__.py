"""Bundled simulators: the Casablanca demo fleet and the MQTT traffic it sends.

``simulate`` is deterministic and free of I/O, and each message says what the service should
make of it, so tests can compute the expected store with ``ground_truth``.
"""

from simulators.fleet import Fleet, generate_fleet, load_fleet, write_fleet
from simulators.publisher import PublishError, PublishStats, publish
from simulators.stream import (
    GroundTruth,
    SimulatedMessage,
    StreamConfig,
    ground_truth,
    history_for,
    simulate,
)

__all__ = [
    "Fleet",
    "GroundTruth",
    "PublishError",
    "PublishStats",
    "SimulatedMessage",
    "StreamConfig",
    "generate_fleet",
    "ground_truth",
    "history_for",
    "load_fleet",
    "publish",
    "simulate",
    "write_fleet",
]
