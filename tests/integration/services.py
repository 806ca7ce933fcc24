"""Real services for the integration tests: a Mosquitto of our own and fresh databases."""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from citytel.config import Settings
from citytel.storage.migrate import migrate

REPO = Path(__file__).resolve().parents[2]


# Below Linux's ephemeral range (32768-60999 by default): a port the kernel gives out for port 0
# is also what it gives every outgoing connection a local end from, so under parallel test
# workers one of their connections could take it between this check and the server's bind.
_PORTS = range(20000, 32000)


def free_port() -> int:
    """A TCP port nobody holds right now, out of the range outgoing connections draw from."""
    for _ in range(200):
        # secrets, not random: hypothesis seeds the random module the same in every worker.
        port = _PORTS[secrets.randbelow(len(_PORTS))]
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        fallback: int = sock.getsockname()[1]
        return fallback


def wait_for_port(port: int, within: float = 10.0) -> None:
    """Block until something accepts connections on ``port``."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    message = f"nothing listens on port {port} after {within} s"
    raise TimeoutError(message)


def write_broker_config(port: int, workdir: Path, *, auth_dir: Path | None = None) -> Path:
    """The shipped ``deploy/mosquitto.conf`` for a private broker; returns its path.

    Only the port, the persistence directory, the log and the user change, so that it runs
    unprivileged beside the machine's own broker with exactly the project's settings.

    With ``auth_dir``, the password and ACL files are ``auth_dir/passwd`` and ``auth_dir/acl``
    (written by citytel). Without it,
    and only for the tests that are not about access control, the broker is opened to
    anonymous clients: a test-only change, stated here.
    """
    text = (REPO / "deploy" / "mosquitto.conf").read_text()
    if auth_dir is None:
        text = re.sub(r"^allow_anonymous\s.*$", "allow_anonymous true", text, flags=re.M)
        text = re.sub(r"^(password_file|acl_file)\s.*$", "", text, flags=re.M)
    else:
        text = re.sub(
            r"^password_file\s.*$", f"password_file {auth_dir / 'passwd'}", text, flags=re.M
        )
        text = re.sub(r"^acl_file\s.*$", f"acl_file {auth_dir / 'acl'}", text, flags=re.M)
    text = re.sub(r"^listener\s+1883.*$", f"listener {port} 127.0.0.1", text, flags=re.M)
    data = workdir / "data"
    data.mkdir(exist_ok=True)
    text = re.sub(r"^persistence_location\s+.*$", f"persistence_location {data}/", text, flags=re.M)
    text = re.sub(r"^(user|log_dest|pid_file)\s.*$", "", text, flags=re.M)
    text += f"\nuser {getpass.getuser()}\nlog_dest file {workdir / 'mosquitto.log'}\n"
    path = workdir / "mosquitto.conf"
    path.write_text(text)
    return path


@dataclass
class Broker:
    """A Mosquitto started by the tests with the project's own configuration."""

    port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = None
    auth_dir: Path | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def config(self) -> Path:
        return write_broker_config(self.port, self.workdir, auth_dir=self.auth_dir)

    def start(self) -> None:
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.process = subprocess.Popen([mosquitto, "-c", str(self.config())])
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@contextlib.contextmanager
def running_broker(workdir: Path, *, auth_dir: Path | None = None) -> Iterator[Broker]:
    """A broker for the duration of the block (see :func:`write_broker_config`)."""
    broker = Broker(port=free_port(), workdir=workdir, auth_dir=auth_dir)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` instead (a URL both psycopg and asyncpg accept)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _admin_url(server_url: str) -> str:
    return with_database(server_url, "postgres")


def create_template(server_url: str) -> str:
    """A migrated database to clone test databases from; returns its name."""
    name = f"citytel_tpl_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(_admin_url(server_url), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_database(server_url, name)
    migrate(Settings(), database_url=url)
    close_template(server_url, name)
    return name


def close_template(server_url: str, name: str) -> None:
    """Keep everyone off a template so that it can be cloned.

    TimescaleDB's job scheduler connects to every database with the extension, and CREATE
    DATABASE ... TEMPLATE refuses a source "being accessed by other users". The scheduler's
    launcher skips databases that refuse connections; the one already there is ended.
    """
    with psycopg.connect(_admin_url(server_url), autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(name))
        )
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )


def clone_database(server_url: str, template: str) -> str:
    """A fresh database cloned from ``template``; returns its URL."""
    name = f"citytel_test_{uuid.uuid4().hex[:12]}"
    statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
        sql.Identifier(name), sql.Identifier(template)
    )
    with psycopg.connect(_admin_url(server_url), autocommit=True) as conn:
        for attempt in range(50):
            try:
                conn.execute(statement)
                break
            except psycopg.errors.ObjectInUse:
                # A scheduler that was starting while the template closed may still be leaving.
                if attempt == 49:
                    raise
                time.sleep(0.1)
    return with_database(server_url, name)


def drop_database(server_url: str, name: str) -> None:
    """Drop a test database, disconnecting whoever is still on it."""
    with psycopg.connect(_admin_url(server_url), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def postgres_bindir() -> Path:
    """The directory of the newest installed PostgreSQL's programs."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3])
    )
    if candidates:
        return candidates[-1].parent
    found = shutil.which("initdb")
    if found is None:
        message = "initdb not found: install PostgreSQL (scripts/bootstrap.sh does)"
        raise RuntimeError(message)
    return Path(found).resolve().parent


def timescaledb_installed(bindir: Path | None = None) -> bool:
    """Whether the timescaledb extension is installed into this machine's PostgreSQL."""
    bindir = bindir or postgres_bindir()
    pg_config = bindir / "pg_config"
    if not pg_config.exists():
        return False
    found = {}
    for option in ("--pkglibdir", "--sharedir"):
        done = subprocess.run([str(pg_config), option], capture_output=True, text=True, check=True)
        found[option] = Path(done.stdout.strip())
    return (found["--pkglibdir"] / "timescaledb.so").exists() and (
        found["--sharedir"] / "extension" / "timescaledb.control"
    ).exists()


def server_options(port: int, socket_dir: Path, *, timescaledb: bool) -> str:
    """``postgres`` options for a private cluster, preloading TimescaleDB when asked."""
    options = f"-p {port} -c listen_addresses=127.0.0.1 -k {socket_dir} -c max_connections=100"
    if timescaledb:
        # No telemetry from a test or benchmark cluster; room for a scheduler per database.
        options += (
            " -c shared_preload_libraries=timescaledb -c timescaledb.telemetry_level=off"
            " -c max_worker_processes=24 -c timescaledb.max_background_workers=16"
        )
    return options


@dataclass
class PgCluster:
    """A PostgreSQL cluster of the tests' own (initdb + pg_ctl), to stop and start at will."""

    port: int
    datadir: Path
    bindir: Path
    timescaledb: bool = False
    # More ``postgres`` options, e.g. what a primary streaming to a standby needs.
    options: str = ""

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            # PostgreSQL refuses to run as root.
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True)

    def _own_parent(self) -> None:
        self.datadir.parent.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.datadir.parent, "postgres")
            self.datadir.parent.chmod(0o755)

    def init(self) -> None:
        self._own_parent()
        self.datadir.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.datadir, "postgres")
        # initdb's pg_hba.conf trusts local replication connections, and its defaults
        # (wal_level replica, max_wal_senders 10) let a standby stream from this cluster.
        self._run("initdb", "-D", str(self.datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def init_standby_of(self, primary: PgCluster) -> None:
        """A copy of ``primary`` that streams from it (``pg_basebackup -R``: a hot standby)."""
        self._own_parent()
        self._run(
            "pg_basebackup",
            *("-D", str(self.datadir), "-h", "127.0.0.1", "-p", str(primary.port)),
            *("-U", "postgres", "-R", "-X", "stream", "-c", "fast"),
        )

    def start(self) -> None:
        options = server_options(self.port, self.datadir, timescaledb=self.timescaledb)
        options += " -c shared_buffers=64MB"
        if self.options:
            options += f" {self.options}"
        # The server's output goes to a file: a pipe held open by it would block us forever.
        log = str(self.datadir.parent / "postgres.log")
        self._run(
            "pg_ctl", "-D", str(self.datadir), "-l", log, "-o", options, "-w", "-t", "30", "start"
        )

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "-t", "30", "stop")


@contextlib.contextmanager
def running_cluster(*, timescaledb: bool | None = None, options: str = "") -> Iterator[PgCluster]:
    """A fresh PostgreSQL cluster on a free port for the duration of the block.

    It preloads TimescaleDB when the extension is installed (or when ``timescaledb`` says so).
    """
    root = Path(tempfile.mkdtemp(prefix="citytel-pg-"))
    bindir = postgres_bindir()
    if timescaledb is None:
        timescaledb = timescaledb_installed(bindir)
    cluster = PgCluster(
        port=free_port(),
        datadir=root / "data",
        bindir=bindir,
        timescaledb=timescaledb,
        options=options,
    )
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


# What a primary streaming to a standby needs, stated rather than left to initdb's defaults.
PRIMARY_OPTIONS = "-c wal_level=replica -c max_wal_senders=4"


@contextlib.contextmanager
def running_standby(primary: PgCluster) -> Iterator[PgCluster]:
    """A hot standby of ``primary`` on its own port and data directory, streaming from it.

    The same programs and, on TimescaleDB, the same preloaded library as the primary: a
    standby replays the extension's WAL and serves its tables read-only.
    """
    root = Path(tempfile.mkdtemp(prefix="citytel-pg-standby-"))
    standby = PgCluster(
        port=free_port(),
        datadir=root / "data",
        bindir=primary.bindir,
        timescaledb=primary.timescaledb,
    )
    try:
        standby.init_standby_of(primary)
        standby.start()
        yield standby
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            standby.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
