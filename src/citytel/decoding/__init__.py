"""Sensor decoding: codecs for LoRaWAN payload bytes, and device profiles that give them meaning.

``formats/`` reduces a network server's envelope to an :class:`~citytel.formats.envelope.Uplink`;
this package turns its bytes (or the network server's decoded object) into readings and health
events, with the profile of the device's model.
"""

from citytel.decoding.codecs import CODECS, Codec
from citytel.decoding.device_payload import decode_fields, interpret_uplink, network_fields
from citytel.decoding.profiles import (
    BatteryFields,
    DeviceProfile,
    FrameFields,
    LevelFields,
    Measure,
    NetworkFields,
    OccupancyFields,
    Vector,
    load_profile,
    load_profiles,
    profile_for,
)
from citytel.decoding.vectors import check_vectors, run_vector

__all__ = [
    "CODECS",
    "BatteryFields",
    "Codec",
    "DeviceProfile",
    "FrameFields",
    "LevelFields",
    "Measure",
    "NetworkFields",
    "OccupancyFields",
    "Vector",
    "check_vectors",
    "decode_fields",
    "interpret_uplink",
    "load_profile",
    "load_profiles",
    "network_fields",
    "profile_for",
    "run_vector",
]
