"""Reading what arrives on MQTT: topics and payload formats, pure functions without I/O."""

from citytel.formats.chirpstack import (
    chirpstack_subscriptions,
    decode_chirpstack,
    parse_chirpstack_topic,
)
from citytel.formats.envelope import EventKind, LorawanTopic, Network, Uplink
from citytel.formats.native import (
    MAX_PAYLOAD_BYTES,
    ParkingPayload,
    WastePayload,
    decode_native,
    encode_native,
)
from citytel.formats.network_server import decode_lorawan
from citytel.formats.topics import TopicAddress, native_topic, parse_native_topic
from citytel.formats.ttn import decode_ttn, parse_ttn_topic, ttn_subscriptions

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "EventKind",
    "LorawanTopic",
    "Network",
    "ParkingPayload",
    "TopicAddress",
    "Uplink",
    "WastePayload",
    "chirpstack_subscriptions",
    "decode_chirpstack",
    "decode_lorawan",
    "decode_native",
    "decode_ttn",
    "encode_native",
    "native_topic",
    "parse_chirpstack_topic",
    "parse_native_topic",
    "parse_ttn_topic",
    "ttn_subscriptions",
]
