"""citytel: smart-city telemetry from MQTT to TimescaleDB, served over HTTP."""

from citytel.domain import DeviceKind, ParkingReading, Reading, WasteReading

__all__ = ["DeviceKind", "ParkingReading", "Reading", "WasteReading"]
__version__ = "0.1.0"
