"""Taking readings off MQTT: subscribe, batch, decode, store, and only then acknowledge."""

from citytel.ingest.mqtt import InboundMessage, MqttConsumer
from citytel.ingest.pipeline import IngestStats, run_ingest, triage

__all__ = ["InboundMessage", "IngestStats", "MqttConsumer", "run_ingest", "triage"]
