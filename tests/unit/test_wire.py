"""MQTT 5 packets as bytes: what the ingest client sends and how it reads the broker's stream."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from citytel.errors import MqttProtocolError
from citytel.ingest import wire


def test_publish_packet_matches_the_standard_layout() -> None:
    """PUBLISH: flags, a three-byte remaining length for 200 KB, topic, packet id, properties."""
    packet = wire.encode_publish("big", b"z" * 200_000, packet_id=1, dup=True)
    # 2 + 3 topic, 2 packet id, 1 empty property length, then the payload: 200,008 bytes,
    # which as a variable byte integer is 0xC8 0x9A 0x0C (72 + 26 * 128 + 12 * 128**2).
    assert packet[:12] == b"\x3a\xc8\x9a\x0c" + b"\x00\x03big" + b"\x00\x01" + b"\x00"
    assert len(packet) == 4 + 200_008
    assert wire.encode_publish("t", b"x", qos=0, retain=True) == b"\x31\x05\x00\x01t\x00x"


def test_connect_packet_matches_the_standard_layout() -> None:
    """CONNECT: protocol name and level 5, flags, keep alive, properties, then the payload."""
    packet = wire.encode_connect(
        "worker-1",
        keepalive=30,
        clean_start=False,
        session_expiry=3600,
        receive_maximum=4000,
        username="u",
        password="p",  # noqa: S106 - a test value
    )
    properties = b"\x11" + (3600).to_bytes(4, "big") + b"\x21" + (4000).to_bytes(2, "big")
    body = (
        b"\x00\x04MQTT\x05"
        + bytes([0x80 | 0x40])  # user name and password, no clean start
        + (30).to_bytes(2, "big")
        + bytes([len(properties)])
        + properties
        + b"\x00\x08worker-1\x00\x01u\x00\x01p"
    )
    assert packet == b"\x10" + bytes([len(body)]) + body


def test_clean_start_connect_without_properties() -> None:
    """A probe's CONNECT asks for a clean start and carries an empty property block."""
    packet = wire.encode_connect("probe", keepalive=10, clean_start=True)
    assert packet == b"\x10\x12\x00\x04MQTT\x05\x02\x00\x0a\x00\x00\x05probe"


def test_subscribe_and_pubacks() -> None:
    """SUBSCRIBE asks QoS 1 per filter; PUBACKs use the two-byte short form, back to back."""
    assert wire.encode_subscribe(7, ["a/#", "$share/g/b/+"]) == (
        b"\x82\x18\x00\x07\x00" + b"\x00\x03a/#\x01" + b"\x00\x0c$share/g/b/+\x01"
    )
    assert wire.encode_pubacks([1, 258]) == b"\x40\x02\x00\x01\x40\x02\x01\x02"


def test_reader_parses_publishes_and_control_packets() -> None:
    """QoS 0 and 1 messages, properties stepped over, a PINGRESP between them."""
    stream = (
        wire.encode_publish("citytel/v1/waste/c1", b'{"fill_pct": 50}', packet_id=9, dup=True)
        + b"\xd0\x00"
        + wire.encode_publish(
            "t/2", b"x", qos=0, properties=b"\x01\x01\x02\x00\x00\x00\x05", retain=True
        )  # payload format and message expiry
    )
    packets = wire.PacketReader().feed(stream)
    assert packets == [
        wire.Publish("citytel/v1/waste/c1", b'{"fill_pct": 50}', 9, 1, retain=False, dup=True),
        wire.Packet(wire.PacketType.PINGRESP, 0, b""),
        wire.Publish("t/2", b"x", 0, 0, retain=True, dup=False),
    ]


@given(
    messages=st.lists(
        st.tuples(st.text(min_size=1, max_size=40), st.binary(max_size=300)),
        min_size=1,
        max_size=20,
    ),
    cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=30),
)
def test_reader_is_indifferent_to_how_the_stream_is_cut(
    messages: list[tuple[str, bytes]], cuts: list[int]
) -> None:
    """However TCP splits the stream, the same messages come out, in order, and nothing is left."""
    stream = b"".join(
        wire.encode_publish(topic, payload, packet_id=i + 1)
        for i, (topic, payload) in enumerate(messages)
    )
    reader = wire.PacketReader()
    got: list[wire.Publish | wire.Packet] = []
    pos = 0
    for size in cuts:
        got += reader.feed(stream[pos : pos + size])
        pos += size
    got += reader.feed(stream[pos:])
    assert [(p.topic, p.payload, p.packet_id) for p in got if isinstance(p, wire.Publish)] == [
        (topic, payload, i + 1) for i, (topic, payload) in enumerate(messages)
    ]
    assert len(reader) == 0


def test_large_message_needs_a_multi_byte_length() -> None:
    """A 200 KB payload (three-byte remaining length) arrives whole, in however many reads."""
    stream = wire.encode_publish("big", b"z" * 200_000, packet_id=1)
    reader = wire.PacketReader()
    assert reader.feed(stream[:100_000]) == []
    [message] = reader.feed(stream[100_000:])
    assert isinstance(message, wire.Publish)
    assert message.payload == b"z" * 200_000


@pytest.mark.parametrize(
    ("stream", "why"),
    [
        (b"\x30\xff\xff\xff\xff\x01", "longer than four bytes"),
        (b"\x36\x05\x00\x01t\x00\x01", "QoS 3"),
        (b"\x32\x07\x00\x01t\x00\x01\x09\x00", "PUBLISH properties run past"),
    ],
)
def test_malformed_streams_are_protocol_errors(stream: bytes, why: str) -> None:
    """A malformed packet raises MqttProtocolError, which makes the client drop the connection."""
    with pytest.raises(MqttProtocolError, match=why):
        wire.PacketReader().feed(stream)


def test_connack_with_properties() -> None:
    """CONNACK: session present, reason code, and the server's keep alive and reason string."""
    properties = b"\x13\x00\x3c" + b"\x1f\x00\x04nope" + b"\x26\x00\x01k\x00\x01v"
    body = b"\x01\x87" + bytes([len(properties)]) + properties
    connack = wire.parse_connack(body)
    assert connack == wire.ConnAck(
        session_present=True, reason=0x87, server_keep_alive=60, reason_string="nope"
    )
    assert wire.describe_reason(connack.reason) == "not authorized (0x87)"
    assert wire.parse_connack(b"\x00\x00") == wire.ConnAck(session_present=False, reason=0)


def test_suback_and_disconnect() -> None:
    """SUBACK lists one code per filter; a DISCONNECT's reason becomes words for the log."""
    assert wire.parse_suback(b"\x00\x01\x00\x01\x9e") == wire.SubAck(1, (0x01, 0x9E))
    assert wire.disconnect_reason(b"") == "normal disconnection (0x00)"
    assert wire.disconnect_reason(b"\x8e\x00") == "session taken over (0x8e)"
    assert wire.disconnect_reason(b"\x98\x06\x1f\x00\x03bye") == "administrative action (0x98): bye"


def test_unknown_property_is_a_protocol_error() -> None:
    """An identifier the standard does not define cannot be stepped over, so it is refused."""
    with pytest.raises(MqttProtocolError, match="unknown property identifier 0x7f"):
        wire.parse_connack(b"\x00\x00\x02\x7f\x00")


@pytest.mark.parametrize(
    "properties",
    [
        b"\x01\x24",  # Maximum QoS without its byte
        b"\x02\x13\x00",  # Server Keep Alive with one of two bytes
        b"\x03\x11\x00\x00",  # Session Expiry Interval with two of four bytes
        b"\x03\x1f\x00\x05",  # a Reason String longer than the block
        b"\x04\x26\x00\x01k",  # a User Property without its value
    ],
)
def test_truncated_properties_are_protocol_errors(properties: bytes) -> None:
    """A property cut short is a protocol error, never an IndexError or a silent misread."""
    with pytest.raises(MqttProtocolError):
        wire.parse_connack(b"\x00\x00" + properties)


@pytest.mark.parametrize(
    ("packet", "why"),
    [
        (wire.encode_publish("t", b"x", packet_id=1, qos=2), "QoS 2"),
        (wire.encode_publish("t", b"x", packet_id=0, qos=1), "packet id 0"),
        (wire.encode_publish("", b"x", packet_id=1), "empty topic"),
        (wire.encode_publish("t", b"x", packet_id=1, properties=b"\x23\x00\x01"), "Topic Alias"),
        (b"\x32\x07\x00\x02\xff\xfe\x00\x01\x00", "UTF-8"),
    ],
)
def test_invalid_publishes_are_protocol_errors(packet: bytes, why: str) -> None:
    """What a broker must not send a QoS 1 subscriber that allowed no topic alias is refused."""
    with pytest.raises(MqttProtocolError, match=why):
        wire.PacketReader().feed(packet)


def test_publish_properties_other_than_topic_alias_are_stepped_over() -> None:
    """A message expiry interval and a user property do not stop the message."""
    properties = b"\x02\x00\x00\x00\x3c" + b"\x26\x00\x01k\x00\x01v"
    [message] = wire.PacketReader().feed(
        wire.encode_publish("t/a", b"x", packet_id=3, properties=properties)
    )
    assert isinstance(message, wire.Publish)
    assert (message.topic, message.payload, message.packet_id) == ("t/a", b"x", 3)
