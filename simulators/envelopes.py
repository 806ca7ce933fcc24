"""Network servers' MQTT envelopes around a sensor's uplink: TTN v3, ChirpStack v4 and v3.

Each builder returns the topic and the JSON body (as a dict, so faults can spoil it before it
is serialised with :func:`dump`). The bodies follow what the servers publish: zero values left
out (TTN, ChirpStack v4), base64 payloads, ChirpStack v3's base64 DevEUI and ``objectJSON``
string.
"""

from __future__ import annotations

import base64
import json
import uuid
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

LorawanFormat = Literal["ttn", "chirpstack_v4", "chirpstack_v3"]
Body = dict[str, Any]

_NAMESPACE = uuid.UUID("5f0c3a52-8f1e-4c47-9d2a-0c1a5ab1ca5a")
_FREQUENCIES = (868_100_000, 868_300_000, 868_500_000)


@dataclass(frozen=True, slots=True)
class NetworkApplication:
    """The network server application the fleet's sensors are registered in.

    ``name`` is the TTN application id; ChirpStack's ids are derived from it, a UUID for v4 and
    a number for v3, so that one name gives the same topics on every run.
    """

    name: str = "citytel-casablanca"
    tenant: str = "ttn"

    @property
    def chirpstack_v4_id(self) -> str:
        """The ChirpStack v4 application id."""
        return str(uuid.uuid5(_NAMESPACE, f"application/{self.name}"))

    @property
    def chirpstack_v3_id(self) -> str:
        """The ChirpStack v3 application id."""
        return str(zlib.crc32(self.name.encode()) % 9000 + 1000)

    @property
    def tenant_id(self) -> str:
        """The ChirpStack v4 tenant id."""
        return str(uuid.uuid5(_NAMESPACE, f"tenant/{self.tenant}"))


@dataclass(frozen=True, slots=True)
class Radio:
    """How one gateway heard one uplink."""

    gateway: int
    rssi: int
    snr: float
    spreading_factor: int
    channel: int
    nanoseconds: int
    """Digits below the microsecond in the server's clock; parsers truncate them."""


@dataclass(frozen=True, slots=True)
class UplinkSpec:
    """Everything an envelope says about one uplink of one device."""

    device_id: str
    dev_eui: str
    model: str
    received_at: datetime
    f_cnt: int
    f_port: int
    raw: bytes
    decoded: dict[str, Any] | None
    radio: Radio


def rfc3339(ts: datetime, nanoseconds: int = 0, *, suffix: str = "Z") -> str:
    """``ts`` with nine fractional digits, as Go servers print their clocks."""
    utc = ts.astimezone(UTC)
    fraction = utc.microsecond * 1000 + nanoseconds % 1000
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{fraction:09d}{suffix}"


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _dev_addr(dev_eui: str) -> str:
    # 0x26 0x0B: The Things Network's NetID 0x13 address block.
    return f"260B{dev_eui[-4:]}"


def _gateway_eui(gateway: int) -> str:
    return f"CA5AFFFE00{gateway:06X}"


def _gateway_name(gateway: int) -> str:
    return f"casablanca-gw-{gateway:02d}"


def _without_zeros(body: Body) -> Body:
    # TTN and ChirpStack v4 leave out fields whose value is 0, "" or false.
    return {k: v for k, v in body.items() if v not in (0, "", False) or isinstance(v, float)}


def ttn(app: NetworkApplication, spec: UplinkSpec) -> tuple[str, Body]:
    """A The Things Stack v3 ``up`` event."""
    radio = spec.radio
    received = rfc3339(spec.received_at, radio.nanoseconds)
    message: Body = _without_zeros(
        {
            "f_port": spec.f_port,
            "f_cnt": spec.f_cnt,
            "frm_payload": _b64(spec.raw),
        }
    )
    if spec.decoded is not None:
        message["decoded_payload"] = spec.decoded
    message |= {
        "rx_metadata": [
            {
                "gateway_ids": {
                    "gateway_id": _gateway_name(radio.gateway),
                    "eui": _gateway_eui(radio.gateway),
                },
                "time": received,
                "rssi": radio.rssi,
                "channel_rssi": radio.rssi,
                "snr": radio.snr,
                "channel_index": radio.channel,
            }
        ],
        "settings": {
            "data_rate": {
                "lora": {
                    "bandwidth": 125000,
                    "spreading_factor": radio.spreading_factor,
                    "coding_rate": "4/5",
                }
            },
            "frequency": str(_FREQUENCIES[radio.channel % len(_FREQUENCIES)]),
        },
        "received_at": received,
        "network_ids": {
            "net_id": "000013",
            "tenant_id": app.tenant,
            "cluster_id": "eu1",
        },
    }
    body: Body = {
        "end_device_ids": {
            "device_id": spec.device_id,
            "application_ids": {"application_id": app.name},
            "dev_eui": spec.dev_eui,
            "dev_addr": _dev_addr(spec.dev_eui),
        },
        "received_at": received,
        "uplink_message": message,
    }
    application = f"{app.name}@{app.tenant}" if app.tenant else app.name
    return f"v3/{application}/devices/{spec.device_id}/up", body


def chirpstack_v4(app: NetworkApplication, spec: UplinkSpec) -> tuple[str, Body]:
    """A ChirpStack v4 ``up`` event."""
    radio = spec.radio
    eui = spec.dev_eui.lower()
    time = rfc3339(spec.received_at, radio.nanoseconds, suffix="+00:00")
    body: Body = {
        "deduplicationId": str(uuid.uuid5(_NAMESPACE, f"{eui}/{spec.f_cnt}/{time}")),
        "time": time,
        "deviceInfo": {
            "tenantId": app.tenant_id,
            "tenantName": app.tenant,
            "applicationId": app.chirpstack_v4_id,
            "applicationName": app.name,
            "deviceProfileId": str(uuid.uuid5(_NAMESPACE, f"profile/{spec.model}")),
            "deviceProfileName": spec.model,
            "deviceName": spec.device_id,
            "devEui": eui,
            "deviceClassEnabled": "CLASS_A",
            "tags": {},
        },
        "devAddr": _dev_addr(spec.dev_eui).lower(),
        "adr": True,
        "dr": 12 - radio.spreading_factor,
    }
    body |= _without_zeros({"fCnt": spec.f_cnt, "fPort": spec.f_port})
    body["data"] = _b64(spec.raw)
    if spec.decoded is not None:
        body["object"] = spec.decoded
    body["rxInfo"] = [
        {
            "gatewayId": _gateway_eui(radio.gateway).lower(),
            "uplinkId": zlib.crc32(f"{eui}/{spec.f_cnt}".encode()),
            "nsTime": time,
            "rssi": radio.rssi,
            "snr": radio.snr,
            "channel": radio.channel,
            "context": _b64(radio.nanoseconds.to_bytes(4, "big")),
            "metadata": {"region_config_id": "eu868", "region_common_name": "EU868"},
            "crcStatus": "CRC_OK",
        }
    ]
    body["txInfo"] = {
        "frequency": _FREQUENCIES[radio.channel % len(_FREQUENCIES)],
        "modulation": {
            "lora": {
                "bandwidth": 125000,
                "spreadingFactor": radio.spreading_factor,
                "codeRate": "CR_4_5",
            }
        },
    }
    return f"application/{app.chirpstack_v4_id}/device/{eui}/event/up", body


def chirpstack_v3(app: NetworkApplication, spec: UplinkSpec) -> tuple[str, Body]:
    """A ChirpStack v3 ``up`` event with the default JSON marshaler (base64 ids)."""
    radio = spec.radio
    body: Body = {
        "applicationID": app.chirpstack_v3_id,
        "applicationName": app.name,
        "deviceName": spec.device_id,
        "deviceProfileName": spec.model,
        "devEUI": _b64(bytes.fromhex(spec.dev_eui)),
        "rxInfo": [
            {
                "gatewayID": _b64(bytes.fromhex(_gateway_eui(radio.gateway))),
                "time": rfc3339(spec.received_at, radio.nanoseconds),
                "rssi": radio.rssi,
                "loRaSNR": radio.snr,
                "channel": radio.channel,
                "rfChain": 0,
                "board": 0,
                "antenna": 0,
                "context": _b64(radio.nanoseconds.to_bytes(4, "big")),
            }
        ],
        "txInfo": {
            "frequency": _FREQUENCIES[radio.channel % len(_FREQUENCIES)],
            "modulation": "LORA",
            "loRaModulationInfo": {
                "bandwidth": 125,
                "spreadingFactor": radio.spreading_factor,
                "codeRate": "4/5",
                "polarizationInversion": False,
            },
        },
        "adr": True,
        "dr": 12 - radio.spreading_factor,
        "fCnt": spec.f_cnt,
        "fPort": spec.f_port,
        "data": _b64(spec.raw),
        "objectJSON": "" if spec.decoded is None else json.dumps(spec.decoded),
        "tags": {},
    }
    return f"application/{app.chirpstack_v3_id}/device/{spec.dev_eui.lower()}/event/up", body


BUILDERS = {"ttn": ttn, "chirpstack_v4": chirpstack_v4, "chirpstack_v3": chirpstack_v3}

# Where each envelope keeps what faults spoil: the time citytel reads, the payload, the
# device's identity (removing it leaves a required field missing).
TIME_PATH: dict[LorawanFormat, tuple[str | int, ...]] = {
    "ttn": ("received_at",),
    "chirpstack_v4": ("time",),
    "chirpstack_v3": ("rxInfo", 0, "time"),
}
DATA_PATH: dict[LorawanFormat, tuple[str | int, ...]] = {
    "ttn": ("uplink_message", "frm_payload"),
    "chirpstack_v4": ("data",),
    "chirpstack_v3": ("data",),
}
IDENTITY_PATH: dict[LorawanFormat, tuple[str | int, ...]] = {
    "ttn": ("end_device_ids",),
    "chirpstack_v4": ("deviceInfo",),
    "chirpstack_v3": ("devEUI",),
}


def envelope(fmt: LorawanFormat, app: NetworkApplication, spec: UplinkSpec) -> tuple[str, Body]:
    """The topic and body a network server of format ``fmt`` publishes for ``spec``."""
    return BUILDERS[fmt](app, spec)


def replace_at(body: Body, path: tuple[str | int, ...], value: Any) -> None:
    """Set (or, with ``None``, remove) the value at ``path`` of a body."""
    *parents, last = path
    node: Any = body
    for step in parents:
        node = node[step]
    if value is None:
        del node[last]
    else:
        node[last] = value


def dump(body: Body) -> bytes:
    """The body as the compact JSON the servers publish."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
