"""Reading what arrives on MQTT: topics and payload formats, pure functions without I/O."""

from citytel.formats.native import (
    MAX_PAYLOAD_BYTES,
    ParkingPayload,
    WastePayload,
    decode_native,
    encode_native,
)
from citytel.formats.topics import TopicAddress, native_topic, parse_native_topic

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "ParkingPayload",
    "TopicAddress",
    "WastePayload",
    "decode_native",
    "encode_native",
    "native_topic",
    "parse_native_topic",
]
