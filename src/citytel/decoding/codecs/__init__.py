"""Sensor codecs: raw LoRaWAN payload bytes to named fields, one module per byte format.

A codec is ``decode(f_port, raw) -> dict`` and raises only ``RejectedMessage`` with reason
``undecodable``. Device profiles name their codec by the keys of :data:`CODECS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from citytel.decoding.codecs import bosch, decentlab, milesight, nwave

Codec = Callable[[int, bytes], dict[str, Any]]

CODECS: dict[str, Codec] = {
    milesight.NAME: milesight.decode,
    decentlab.NAME: decentlab.decode,
    bosch.NAME: bosch.decode,
    nwave.NPS310_NAME: nwave.decode_nps310,
    nwave.NPS405_NAME: nwave.decode_nps405,
}

__all__ = ["CODECS", "Codec"]
