"""`citytel ingest` as a real process, for tests that kill, restart or multiply it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from citytel.config import Settings


class IngestProcess:
    """One ``citytel ingest`` worker with a given identity, logging to a file."""

    def __init__(self, settings: Settings, log: Path, *, client_id: str | None = None) -> None:
        self.settings = settings
        self.log = log
        self.client_id = client_id or settings.mqtt_client_id
        self.process: subprocess.Popen[bytes] | None = None

    def _env(self) -> dict[str, str]:
        settings = self.settings
        return {
            **os.environ,
            "CITYTEL_DATABASE_URL": settings.database_url.get_secret_value(),
            "CITYTEL_MQTT_URL": settings.mqtt_url,
            "CITYTEL_MQTT_TOPIC_ROOT": settings.mqtt_topic_root,
            "CITYTEL_MQTT_CLIENT_ID": self.client_id,
            "CITYTEL_MQTT_SHARE_GROUP": settings.mqtt_share_group,
            "CITYTEL_INGEST_BATCH_SIZE": "200",
            "CITYTEL_INGEST_FLUSH_MS": "20",
            "CITYTEL_INGEST_STATS_INTERVAL_S": "1",
            # Several workers run at once: none binds the default metrics port.
            "CITYTEL_INGEST_METRICS_PORT": "0",
        }

    def start(self, within: float = 20.0) -> None:
        """Start the worker and wait until the broker has granted its subscription."""
        before = self.log.read_text().count("subscribed to") if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "citytel", "ingest"],
                env=self._env(),
                stdout=out,
                stderr=out,
            )
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.log.read_text().count("subscribed to") > before:
                return
            if self.process.poll() is not None:
                message = f"citytel ingest exited early:\n{self.log.read_text()}"
                raise RuntimeError(message)
            time.sleep(0.05)
        self.process.kill()
        message = f"citytel ingest did not subscribe within {within} s:\n{self.log.read_text()}"
        raise TimeoutError(message)

    def kill(self) -> None:
        """SIGKILL: no goodbye, nothing flushed, nothing acknowledged."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM and wait; a worker that was killed already is left alone."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
