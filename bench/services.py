"""Private services for a benchmark run: Mosquitto, a PostgreSQL cluster, citytel processes.

Everything listens on 127.0.0.1 on a free port, lives in one temporary directory and is stopped
by :class:`Services` on exit, whatever happened. Child processes get their own process group, so
stopping one also stops whatever it started.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psycopg
from psycopg import sql
from pydantic import SecretStr
from tests.integration.services import (
    free_port,
    postgres_bindir,
    server_options,
    timescaledb_installed,
    wait_for_port,
    write_broker_config,
)

from citytel.config import Settings
from citytel.storage.migrate import migrate

log = logging.getLogger("bench")

REPO = Path(__file__).resolve().parents[1]


def wait_for_http(url: str, within: float = 30.0) -> None:
    """Block until ``url`` answers 200."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(url, timeout=1) as response,  # noqa: S310 - our own URL
        ):
            if response.status == 200:
                return
        time.sleep(0.1)
    message = f"{url} did not answer 200 within {within} s"
    raise TimeoutError(message)


def _wait_for_live_view(base: str, within: float, headers: Mapping[str, str]) -> None:
    """Block until free-spot searches are answered from the live view (its first read done)."""
    deadline = time.monotonic() + within
    live = 0
    url = f"{base}/v1/parking/free?lat=0&lon=0"
    request = urllib.request.Request(url, headers=dict(headers))  # noqa: S310 - our own URL
    while live < 10:  # every worker's view, most likely, with several workers
        try:
            with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - our URL
                live = live + 1 if response.headers.get("x-citytel-view") == "live" else 0
        except urllib.error.HTTPError as exc:
            answer = f"{exc.code}: {exc.read()[:500].decode(errors='replace')}"
            if exc.code != 503 or time.monotonic() > deadline:
                message = f"{url} answered {answer}"
                raise RuntimeError(message) from exc
            log.warning("%s answered %s; waiting", url, answer)
            live = 0
        if time.monotonic() > deadline:
            message = f"{base} did not answer from its live parking view within {within} s"
            raise TimeoutError(message)
        time.sleep(0.05)


def start_group(
    command: list[str],
    *,
    env: Mapping[str, str] | None = None,
    out: IO[bytes] | int | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``command`` in a process group of its own."""
    return subprocess.Popen(  # noqa: S603 - our own command lines
        command,
        env=dict(env) if env is not None else None,
        stdout=out,
        stderr=subprocess.STDOUT if out is not None else None,
        start_new_session=True,
    )


def stop_group(process: subprocess.Popen[bytes], *, within: float = 20.0) -> None:
    """SIGTERM the process group, then SIGKILL it if it is still there after ``within`` s."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=within)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (0 when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    # Fields 14 and 15 of stat(5); the split above starts at field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def clean_env(**citytel: str) -> dict[str, str]:
    """The environment without any CITYTEL_ setting of the caller, plus ``citytel`` settings.

    Keys are setting names without the prefix: ``clean_env(database_url=...)``.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYTEL_")}
    env.update({f"CITYTEL_{k.upper()}": v for k, v in citytel.items()})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return env


@dataclass
class Broker:
    """Mosquitto with the project's own ``deploy/mosquitto.conf``; only port, paths, user differ."""

    port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None  # noqa: S101
        return self.process.pid

    def start(self) -> None:
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.process = start_group(
            [mosquitto, "-c", str(write_broker_config(self.port, self.workdir))]
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process)
            self.process = None


@dataclass
class PgCluster:
    """A PostgreSQL cluster of the benchmark's own, so that no other database disturbs it.

    Durability is left at PostgreSQL's defaults (fsync, synchronous_commit): ingestion
    acknowledges after a commit, and a benchmark that weakened the commit would flatter it.
    """

    port: int
    root: Path
    bindir: Path = field(default_factory=postgres_bindir)

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def version(self) -> str:
        return self.bindir.parent.name

    def _run(self, *args: str) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            # PostgreSQL refuses to run as root.
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, check=False)  # noqa: S603
        if done.returncode != 0:
            message = f"{args[0]} failed: {done.stderr.decode(errors='replace')[-2000:]}"
            raise RuntimeError(message)

    def start(self) -> None:
        self.datadir.mkdir(parents=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.datadir, "postgres")
            self.root.chmod(0o755)
        self._run("initdb", "-D", str(self.datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        # TimescaleDB is preloaded when installed, so that the benchmark measures that store.
        options = server_options(
            self.port, self.datadir, timescaledb=timescaledb_installed(self.bindir)
        )
        options += " -c shared_buffers=256MB"
        log = str(self.root / "postgres.log")
        self._run(
            "pg_ctl", "-D", str(self.datadir), "-l", log, "-o", options, "-w", "-t", "60", "start"
        )

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._run("pg_ctl", "-D", str(self.datadir), "-m", "immediate", "-w", "stop")

    def postmaster_pid(self) -> int:
        return int((self.datadir / "postmaster.pid").read_text().split()[0])

    def cpu_seconds(self) -> float:
        """CPU time of the postmaster and its live backends and workers."""
        pid = self.postmaster_pid()
        return sum(cpu_seconds(p) for p in [pid, *children_of(pid)])

    def create_database(self, name: str) -> str:
        """A new, migrated database; returns its URL."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        url = self.url(name)
        migrate(Settings(database_url=SecretStr(url)), database_url=url)
        return url


class Worker:
    """A real ``citytel ingest`` process with a stable client id, logging to a file."""

    def __init__(
        self,
        *,
        database_url: str,
        mqtt_url: str,
        root: str,
        client_id: str,
        log: Path,
        metrics_port: int = 0,
    ) -> None:
        self.client_id = client_id
        self.log = log
        self.env = clean_env(
            database_url=database_url,
            mqtt_url=mqtt_url,
            mqtt_topic_root=root,
            mqtt_client_id=client_id,
            ingest_stats_interval_s="5",
            ingest_metrics_port=str(metrics_port),
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None  # noqa: S101
        return self.process.pid

    def _subscriptions(self) -> int:
        return self.log.read_text().count("subscribed to") if self.log.exists() else 0

    def start(self, *, wait: bool = True, within: float = 30.0) -> None:
        """Start the worker; with ``wait``, until the broker has granted its subscription."""
        before = self._subscriptions()
        with self.log.open("ab") as out:
            self.process = start_group(
                [sys.executable, "-m", "citytel", "ingest"], env=self.env, out=out
            )
        if wait:
            self.wait_subscribed(before, within)

    def wait_subscribed(self, before: int, within: float) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self._subscriptions() > before:
                return
            if self.process is not None and self.process.poll() is not None:
                message = f"citytel ingest exited early, see {self.log.name}"
                raise RuntimeError(message)
            time.sleep(0.05)
        message = f"citytel ingest did not subscribe within {within} s"
        raise TimeoutError(message)

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process)
            self.process = None


class Services:
    """The broker, the cluster and a migrated database, for the lifetime of a ``with`` block."""

    def __init__(self, keep: bool = False, *, ingest_metrics: bool = True) -> None:
        self.keep = keep
        # Each worker serves /metrics on a port of its own, as in production, unless switched off.
        self.ingest_metrics = ingest_metrics
        self.workdir = Path(tempfile.mkdtemp(prefix="citytel-bench-"))
        # PostgreSQL runs as its own user when we are root: it must reach its directory.
        self.workdir.chmod(0o755)
        self.broker = Broker(port=free_port(), workdir=self.workdir)
        self.cluster = PgCluster(port=free_port(), root=self.workdir / "pg")
        self.database_url = ""
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Services:
        try:
            self._stack.callback(self._remove)
            self.cluster.start()
            self._stack.callback(self.cluster.stop)
            self.broker.start()
            self._stack.callback(self.broker.stop)
            self.database_url = self.cluster.create_database("citytel")
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stack.close()

    def on_exit(self, process: subprocess.Popen[bytes]) -> None:
        """Stop ``process`` (and its group) when the services stop, if still running."""
        self._stack.callback(stop_group, process)

    def _remove(self) -> None:
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def worker(self, root: str, client_id: str) -> Worker:
        """An ingest worker on this broker and database, stopped on exit at the latest."""
        worker = Worker(
            database_url=self.database_url,
            mqtt_url=self.broker.url,
            root=root,
            client_id=client_id,
            log=self.workdir / f"{client_id}.log",
            metrics_port=free_port() if self.ingest_metrics else 0,
        )
        self._stack.callback(worker.stop)
        return worker


def create_api_key(services: Services, name: str) -> str:
    """A new admin API key in the benchmark's database, through ``citytel keys create``."""
    done = subprocess.run(  # noqa: S603 - our own command line
        [sys.executable, "-m", "citytel", "keys", "create", "--name", name, "--scope", "admin"],
        env=clean_env(database_url=services.database_url),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def auth_headers(key: str | None) -> dict[str, str]:
    """The header that sends ``key`` (none for anonymous calls)."""
    return {"Authorization": f"Bearer {key}"} if key else {}


# The process of each running ``citytel_api`` by base URL, for its CPU time (and its workers').
API_PIDS: dict[str, int] = {}


@contextlib.contextmanager
def citytel_api(
    services: Services,
    *,
    key: str | None,
    workers: int = 1,
    live_spots: bool = True,
    anonymous_parking: bool = False,
    planning: dict[str, str] | None = None,
    within: float = 60.0,
) -> Iterator[str]:
    """``citytel api`` as a real process with ``workers`` workers; yields its base URL.

    ``live_spots=False`` switches the in-memory parking view off, so that every free-spot
    search is a database query: the API as it was before the view, for comparison.
    ``anonymous_parking`` opens the parking routes without a key (the key check's baseline).
    ``planning``: api_planning_* settings, e.g. the bound off, for comparison.
    """
    port = free_port()
    env = clean_env(
        database_url=services.database_url,
        mqtt_url=services.broker.url,
        api_host="127.0.0.1",
        api_port=str(port),
        api_workers=str(workers),
        api_live_spots=str(live_spots).lower(),
        api_anonymous_parking=str(anonymous_parking).lower(),
        log_level="WARNING",
        **(planning or {}),
    )
    command = [sys.executable, "-m", "citytel", "api"]
    log = services.workdir / f"api-{workers}-{'live' if live_spots else 'db'}.log"
    with log.open("ab") as out:
        process = start_group(command, env=env, out=out)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_http(f"{base}/readyz", within)
        if live_spots:
            _wait_for_live_view(base, within, auth_headers(key))
        API_PIDS[base] = process.pid
        yield base
    finally:
        API_PIDS.pop(f"http://127.0.0.1:{port}", None)
        stop_group(process)
