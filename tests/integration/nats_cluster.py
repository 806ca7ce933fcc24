"""A private NATS JetStream cluster for the tests: three ``nats-server`` processes, MQTT enabled."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from citytel.config import Settings
from tests.integration.services import free_port, wait_for_port


def nats_server() -> str:
    """The ``nats-server`` program; the tests need it as they need Mosquitto."""
    found = shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin:/usr/bin")
    if found is None:
        message = "nats-server not found: install it (scripts/bootstrap.sh does)"
        raise RuntimeError(message)
    return found


@dataclass
class NatsNode:
    """One ``nats-server`` of the cluster, with its own ports and JetStream directory."""

    name: str
    port: int
    cluster_port: int
    mqtt_port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def write_config(self, peers: list[NatsNode], cluster_name: str) -> Path:
        routes = ", ".join(
            f"nats-route://127.0.0.1:{peer.cluster_port}" for peer in peers if peer is not self
        )
        store = self.workdir / "jetstream"
        store.mkdir(parents=True, exist_ok=True)
        text = f"""
server_name: {self.name}
listen: 127.0.0.1:{self.port}
jetstream {{
  store_dir: "{store}"
  max_memory_store: 64MB
  max_file_store: 1GB
}}
cluster {{
  name: {cluster_name}
  listen: 127.0.0.1:{self.cluster_port}
  routes: [{routes}]
}}
mqtt {{
  listen: 127.0.0.1:{self.mqtt_port}
  # Explicit: left alone, the MQTT streams take the replicas of the nodes known when the first
  # client connects, and an R2 stream stalls every QoS 1 publish when one of its two nodes dies.
  stream_replicas: {len(peers)}
}}
"""
        path = self.workdir / "nats.conf"
        path.write_text(text)
        return path

    def start(self) -> None:
        config = self.workdir / "nats.conf"
        with (self.workdir / "nats.log").open("ab") as log:
            self.process = subprocess.Popen(
                [nats_server(), "-c", str(config)], stdout=log, stderr=log
            )
        wait_for_port(self.port)
        wait_for_port(self.mqtt_port)

    def kill(self) -> None:
        """SIGKILL: no goodbye, nothing flushed."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None


@dataclass
class NatsCluster:
    """Three routed ``nats-server`` nodes with JetStream and an MQTT listener each."""

    nodes: list[NatsNode] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Every node's URL, as CITYTEL_NATS_URL takes them."""
        return ",".join(node.url for node in self.nodes)

    def node(self, name: str) -> NatsNode:
        return next(node for node in self.nodes if node.name == name)

    def start(self) -> None:
        for node in self.nodes:
            if not node.running:
                node.start()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()


@contextlib.contextmanager
def running_nats_cluster(size: int = 3) -> Iterator[NatsCluster]:
    """A fresh cluster on free ports, its JetStream data in a temporary directory."""
    root = Path(tempfile.mkdtemp(prefix="citytel-nats-"))
    cluster = NatsCluster(
        [
            NatsNode(
                name=f"n{i + 1}",
                port=free_port(),
                cluster_port=free_port(),
                mqtt_port=free_port(),
                workdir=root / f"n{i + 1}",
            )
            for i in range(size)
        ]
    )
    for node in cluster.nodes:
        node.write_config(cluster.nodes, cluster_name=f"citytel-{root.name[-8:]}")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.kill()
        shutil.rmtree(root, ignore_errors=True)


def jetstream_env(settings: Settings) -> dict[str, str]:
    """The environment a ``citytel ingest`` process needs to read this test's stream."""
    return {
        "CITYTEL_INGEST_SOURCE": "jetstream",
        "CITYTEL_NATS_URL": settings.nats_url,
        "CITYTEL_NATS_STREAM": settings.nats_stream,
        "CITYTEL_NATS_DURABLE": settings.nats_durable,
        "CITYTEL_NATS_REPLICAS": str(settings.nats_replicas),
        "CITYTEL_NATS_ACK_WAIT_S": str(settings.nats_ack_wait_s),
        "CITYTEL_NATS_MAX_DELIVER": str(settings.nats_max_deliver),
        "CITYTEL_NATS_MAX_BYTES": str(settings.nats_max_bytes),
        "CITYTEL_MQTT_LORAWAN": str(settings.mqtt_lorawan).lower(),
    }
