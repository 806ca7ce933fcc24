"""Running a profile's own test vectors, so a profile that disagrees with its vendor is caught."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from citytel.decoding.device_payload import decode_fields
from citytel.decoding.profiles import DeviceProfile, Vector
from citytel.domain import HealthEvent, Outcome
from citytel.errors import ConfigurationError
from citytel.formats.envelope import Uplink

VECTOR_TS = datetime(2026, 1, 1, tzinfo=UTC)
VECTOR_DEVICE = "vector-device"


def run_vector(
    profile: DeviceProfile, vector: Vector
) -> tuple[dict[str, Any], tuple[Outcome, ...]]:
    """The decoded fields and the outcomes of one vector, through the production path."""
    uplink = Uplink(
        network="ttn",
        application="vectors",
        device_id=VECTOR_DEVICE,
        dev_eui=None,
        received_at=VECTOR_TS,
        f_port=vector.f_port,
        raw=vector.raw,
        network_decoded=vector.network,
    )
    fields = decode_fields(profile, uplink)
    outcomes = profile.interpret(
        fields, device_id=VECTOR_DEVICE, ts=VECTOR_TS, depth_mm=vector.depth_mm
    )
    return fields, outcomes


def outcome_name(outcome: Outcome) -> str:
    """``reading`` for a reading, else the health event's kind."""
    return outcome.event.value if isinstance(outcome, HealthEvent) else "reading"


def check_vectors(profile: DeviceProfile) -> None:
    """Run every vector of ``profile`` and compare with what it expects.

    Raises:
        ConfigurationError: naming the profile, the vector and the first difference.
    """
    for index, vector in enumerate(profile.vectors):
        problem = _difference(profile, vector)
        if problem:
            message = f"{profile.model} vector {index} ({vector.description}): {problem}"
            raise ConfigurationError(message)


def _difference(profile: DeviceProfile, vector: Vector) -> str | None:
    fields, outcomes = run_vector(profile, vector)
    for name, expected in vector.decoded.items():
        if not _same(fields.get(name), expected):
            return f"decoded {name}={fields.get(name)!r}, expected {expected!r}"
    names = [outcome_name(outcome) for outcome in outcomes]
    if names != vector.outcomes:
        return f"outcomes {names}, expected {vector.outcomes}"
    for attribute in ("fill_pct", "occupied", "battery_pct", "temperature_c"):
        expected = getattr(vector, attribute)
        if expected is None:
            continue
        for outcome in outcomes:
            actual = getattr(outcome, attribute, expected)
            if not _same(actual, expected):
                return f"{outcome_name(outcome)} {attribute}={actual!r}, expected {expected!r}"
    return None


def _same(actual: Any, expected: Any) -> bool:
    if isinstance(expected, float) or isinstance(actual, float):
        if not isinstance(actual, int | float) or not isinstance(expected, int | float):
            return False
        return math.isclose(actual, expected, rel_tol=1e-9, abs_tol=1e-6)
    return bool(actual == expected)
