"""Settings, read once from the environment (prefix ``CITYTEL_``) and passed down."""

from __future__ import annotations

import math
import re
import socket
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from citytel.errors import ConfigurationError

# The interval units a retention period may use, each as its shortest length: a reading is refused
# only when TimescaleDB would certainly drop it (PostgreSQL counts a month as 28 to 31 days).
_UNIT_LENGTH = {
    "second": timedelta(seconds=1),
    "minute": timedelta(minutes=1),
    "hour": timedelta(hours=1),
    "day": timedelta(days=1),
    "week": timedelta(weeks=1),
    "month": timedelta(days=28),
    "year": timedelta(days=365),
}
_PERIOD = re.compile(r"^\s*(\d+)\s*(second|minute|hour|day|week|month|year)s?\s*$")


def parse_period(text: str) -> timedelta:
    """``"400 days"``, ``"2 years"``: a PostgreSQL interval of one unit, as a timedelta."""
    match = _PERIOD.match(text.lower())
    if match is None:
        message = f"{text!r} is not a period like '400 days' or '2 years'"
        raise ValueError(message)
    return int(match.group(1)) * _UNIT_LENGTH[match.group(2)]


def parse_service_area(text: str) -> tuple[float, float, float, float]:
    """``"-7.75,33.45,-7.45,33.65"``: west, south, east, north in degrees."""
    try:
        west, south, east, north = (float(part) for part in text.split(","))
    except ValueError:
        west = south = east = north = math.nan
    if not (-180 <= west < east <= 180 and -90 <= south < north <= 90):
        message = (
            f"CITYTEL_FLEET_SERVICE_AREA {text!r} must be west,south,east,north in degrees "
            "(west < east, south < north), e.g. -7.75,33.45,-7.45,33.65"
        )
        raise ValueError(message)
    return west, south, east, north


def _default_client_id() -> str:
    # The host name is stable across restarts of a process on the same host, pod (StatefulSet) or
    # container name, which is what lets a restarted worker resume its own persistent session.
    return f"citytel-ingest-{socket.gethostname()}"


class Settings(BaseSettings):
    """Everything citytel can be told from outside. Defaults work on a local developer machine."""

    # Inputs are never quoted in validation errors: a URL may carry a password.
    model_config = SettingsConfigDict(
        env_prefix="CITYTEL_", extra="ignore", hide_input_in_errors=True
    )

    database_url: SecretStr = SecretStr("postgresql://postgres:postgres@127.0.0.1:5432/citytel")
    database_pool_size: int = Field(default=10, ge=1, le=200)
    # Passwords `citytel migrate` gives the citytel_ingest and citytel_api roles (0012_roles.sql).
    database_ingest_password: SecretStr | None = None
    database_api_password: SecretStr | None = None
    # A streaming replica of the database for the API's read routes and its live parking view
    # (docs/operations.md, "Read replicas"); writes stay on CITYTEL_DATABASE_URL. Reads fall back
    # to the primary while the replica lags more than the limit or cannot be reached, and
    # return once its lag is back under half the limit. The lag is measured every check.
    database_read_url: SecretStr | None = None
    database_read_max_lag_s: float = Field(default=5.0, gt=0)
    database_read_check_s: float = Field(default=1.0, gt=0, le=60)

    mqtt_url: str = "mqtt://127.0.0.1:1883"
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    mqtt_client_id: str = Field(default_factory=_default_client_id, min_length=1, max_length=128)
    mqtt_topic_root: str = "citytel/v1"
    mqtt_share_group: str = "citytel"
    mqtt_session_expiry_s: int = Field(default=7 * 24 * 3600, ge=0)
    mqtt_receive_maximum: int = Field(default=4000, ge=1, le=65535)
    mqtt_keepalive_s: int = Field(default=30, ge=5, le=65535)
    mqtt_lorawan: bool = True
    # TLS, for an mqtts:// URL: the CA that signed the broker's certificate (else the system's),
    # a client certificate and its key for brokers that require one, and the name the broker's
    # certificate must carry when it is not the URL's host.
    mqtt_tls_ca_file: Path | None = None
    mqtt_tls_cert_file: Path | None = None
    mqtt_tls_key_file: Path | None = None
    mqtt_tls_server_name: str | None = None

    ingest_batch_size: int = Field(default=1000, ge=1)
    # Payload bytes that close a batch before it has ingest_batch_size messages: messages of
    # hundreds of readings make smaller transactions, several in flight at once (0: no bound).
    ingest_batch_bytes: int = Field(default=1024**2, ge=0)
    ingest_flush_ms: int = Field(default=100, ge=1)
    ingest_concurrency: int = Field(default=3, ge=1, le=32)
    ingest_max_future_s: int = Field(default=300, ge=0)
    ingest_stats_interval_s: float = Field(default=30.0, gt=0)
    # Prometheus metrics of `citytel ingest` (/metrics); port 0 switches them off.
    ingest_metrics_host: str = "127.0.0.1"
    ingest_metrics_port: int = Field(default=9464, ge=0, le=65535)

    # Where ingest reads from: the MQTT broker (one machine), or a NATS JetStream stream (a cluster;
    # docs/operations.md, "growing past one machine").
    ingest_source: Literal["mqtt", "jetstream"] = "mqtt"

    # Comma-separated nats:// URLs of the cluster's nodes; the client fails over between them.
    nats_url: str = "nats://127.0.0.1:4222"
    nats_username: str | None = None
    nats_password: SecretStr | None = None
    nats_stream: str = Field(default="CITYTEL", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    nats_durable: str = Field(default="citytel-ingest", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    nats_replicas: int = Field(default=1, ge=1, le=5)
    # The backlog the stream holds for ingest: at either limit it refuses new messages (discard
    # new) rather than drop old ones; messages older than the age limit expire.
    nats_max_age_s: int = Field(default=7 * 24 * 3600, ge=60)
    nats_max_bytes: int = Field(default=10 * 1024**3, ge=1024**2)
    nats_max_msgs: int = Field(default=-1, ge=-1)
    nats_duplicate_window_s: int = Field(default=120, ge=1)
    # Longer than the worst batch: a worker renews it while it retries through an outage.
    nats_ack_wait_s: float = Field(default=60.0, ge=1)
    nats_max_ack_pending: int = Field(default=20_000, ge=1)
    # A message handed out this many times without being committed is dead-lettered and ended.
    nats_max_deliver: int = Field(default=5, ge=2)

    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8080, ge=1, le=65535)
    api_max_radius_m: float = Field(default=5000.0, gt=0)
    api_workers: int = Field(default=1, ge=1, le=64)
    # Free-spot searches from each API process's in-memory view (src/citytel/api/live_spots.py).
    api_live_spots: bool = True
    api_live_refresh_ms: int = Field(default=500, ge=10)
    api_live_resync_s: float = Field(default=600.0, gt=0)
    api_live_max_staleness_s: float = Field(default=10.0, gt=0)
    # Security (README "Security"): every route but the health checks needs an API key, except
    # the read-only parking routes when a city opens them as open data.
    api_anonymous_parking: bool = False
    # A positive key lookup is remembered this long (revoking through the API forgets it at
    # once in that process); last_used_at is written at most once per key per touch interval.
    api_key_cache_s: float = Field(default=1.0, ge=0, le=5)
    api_key_touch_s: float = Field(default=60.0, ge=0)
    api_max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # Collection rounds planned at once per API process, how many more may wait their turn
    # (beyond them a 429), and how long an identical request is answered with the plan already
    # made (src/citytel/api/planning.py).
    api_planning_concurrency: int = Field(default=1, ge=1, le=64)
    api_planning_queue: int = Field(default=32, ge=0, le=10_000)
    api_planning_cache_s: float = Field(default=5.0, ge=0, le=300)
    # The container list's answers are sent again for this long to identical requests
    # (src/citytel/api/answers.py); 0 asks the database every time.
    api_containers_cache_s: float = Field(default=1.0, ge=0, le=60)
    # Changes pushed over Server-Sent Events (src/citytel/api/events.py).
    api_events: bool = True
    api_events_refresh_ms: int = Field(default=500, ge=10)
    api_events_attention_s: float = Field(default=30.0, gt=0)
    api_events_retained: int = Field(default=10_000, ge=1, le=1_000_000)
    api_events_keepalive_s: float = Field(default=15.0, gt=0)
    api_events_debounce_ms: int = Field(default=1000, ge=0)
    # The operations console's basemap: a MapLibre style URL; empty, zones on a plain background.
    console_style_url: str = ""

    timescale_chunk_interval: str = "7 days"
    timescale_compress_after: str = "7 days"
    timescale_retention: str = "400 days"
    # The hourly and daily aggregates outlive the raw readings: a city's reports look back years.
    timescale_aggregate_retention: str = "5 years"
    # `citytel dead-letters prune` deletes letters last received longer ago than this.
    dead_letter_retention_days: int = Field(default=30, ge=1, le=36_500)

    # Mosquitto's password and ACL files, written by `citytel gateways` (src/citytel/broker.py),
    # and the broker's pid file, to make it reload them (SIGHUP).
    broker_password_file: Path | None = None
    broker_acl_file: Path | None = None
    broker_pid_file: Path | None = None

    fleet_file: Path = Path("sensors/fleet/casablanca.geojson")
    # "west,south,east,north" in degrees: a fleet file's devices must stand inside it.
    fleet_service_area: str | None = None
    sensor_profiles_dir: Path | None = None
    log_level: str = "INFO"

    @field_validator("mqtt_topic_root")
    @classmethod
    def _topic_root_has_no_wildcards(cls, value: str) -> str:
        if any(c in value for c in "+#") or value.startswith("/") or value.endswith("/"):
            message = (
                "mqtt_topic_root must be a plain topic prefix without wildcards or edge slashes"
            )
            raise ValueError(message)
        return value

    @field_validator("mqtt_url")
    @classmethod
    def _mqtt_url_is_usable(cls, value: str) -> str:
        try:
            _broker_address(value)
        except ConfigurationError as exc:
            raise ValueError(str(exc)) from exc
        return value

    @field_validator("fleet_service_area")
    @classmethod
    def _service_area_is_a_box(cls, value: str | None) -> str | None:
        if value:
            parse_service_area(value)
        return value or None

    @property
    def service_area(self) -> tuple[float, float, float, float] | None:
        """Where fleet devices must stand (CITYTEL_FLEET_SERVICE_AREA), or None for anywhere."""
        return parse_service_area(self.fleet_service_area) if self.fleet_service_area else None

    @field_validator("database_url")
    @classmethod
    def _database_url_is_usable(cls, value: SecretStr) -> SecretStr:
        database_address(value.get_secret_value())
        return value

    @field_validator("database_read_url")
    @classmethod
    def _read_url_is_usable(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        database_address(value.get_secret_value(), setting="CITYTEL_DATABASE_READ_URL")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level_is_known(cls, value: str) -> str:
        if value.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            message = "must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
            raise ValueError(message)
        return value

    @field_validator("timescale_retention", "timescale_aggregate_retention")
    @classmethod
    def _retention_is_a_period(cls, value: str) -> str:
        parse_period(value)
        return value

    @model_validator(mode="after")
    def _aggregates_outlive_readings(self) -> Settings:
        if parse_period(self.timescale_aggregate_retention) <= self.retention_period:
            message = (
                "CITYTEL_TIMESCALE_AGGREGATE_RETENTION "
                f"({self.timescale_aggregate_retention!r}) must be longer than "
                f"CITYTEL_TIMESCALE_RETENTION ({self.timescale_retention!r}): the hourly and "
                "daily history is kept after the raw readings are dropped, not before"
            )
            raise ValueError(message)
        return self

    @property
    def retention_period(self) -> timedelta:
        """How long readings are kept (CITYTEL_TIMESCALE_RETENTION); older ones are refused."""
        return parse_period(self.timescale_retention)

    @property
    def database_where(self) -> str:
        """``host:port/database`` of ``database_url``, for messages: never the user or password."""
        return database_address(self.database_url.get_secret_value())

    @property
    def database_read_where(self) -> str | None:
        """``host:port/database`` of ``database_read_url`` (None when unset), for the log."""
        if self.database_read_url is None:
            return None
        return database_address(self.database_read_url.get_secret_value())

    @property
    def mqtt_host_port(self) -> tuple[str, int]:
        """The broker's host and port from ``mqtt_url`` (``mqtt://host:port``)."""
        return _broker_address(self.mqtt_url)

    @property
    def mqtt_tls(self) -> bool:
        """Whether the broker is reached over TLS (an ``mqtts://`` URL)."""
        return urlsplit(self.mqtt_url).scheme in _TLS_SCHEMES

    @property
    def profiles_dir(self) -> Path:
        """The device profiles: the configured directory, else the ones shipped with citytel."""
        if self.sensor_profiles_dir is not None:
            return self.sensor_profiles_dir
        packaged = Path(__file__).resolve().parent / "profiles"
        if packaged.is_dir():
            return packaged
        return Path(__file__).resolve().parents[2] / "sensors" / "profiles"


_TLS_SCHEMES = {"mqtts", "ssl"}


def _broker_address(url: str) -> tuple[str, int]:
    """Host and port of an ``mqtt[s]://host:port`` URL; ConfigurationError naming the setting."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
        valid = False
    else:
        valid = True
    if not valid or parts.scheme not in {"mqtt", "tcp", *_TLS_SCHEMES} or not parts.hostname:
        # Without the URL itself: it may carry a password.
        message = (
            "CITYTEL_MQTT_URL must look like mqtt://host:1883 or, over TLS, mqtts://host:8883 "
            "(a host name, an optional port from 1 to 65535)"
        )
        raise ConfigurationError(message)
    return parts.hostname, port or (8883 if parts.scheme in _TLS_SCHEMES else 1883)


def database_address(url: str, *, setting: str = "CITYTEL_DATABASE_URL") -> str:
    """``host:port/database`` of a PostgreSQL URL; ValueError naming ``setting`` otherwise.

    The message never quotes the URL: it may carry a password.
    """
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in {"postgresql", "postgres"} or port == -1:
        message = (
            f"{setting} must look like postgresql://user:password@host:5432/citytel "
            "(scheme postgresql, an optional port from 1 to 65535)"
        )
        raise ValueError(message)
    host = parts.hostname or "localhost"
    return f"{host}:{port or 5432}{parts.path or '/'}"


def describe_invalid_settings(error: ValidationError) -> list[str]:
    """One line per invalid setting, naming its variable, what is wrong and the fix.

    Never the value itself: it may be a password.
    """
    lines = []
    for problem in error.errors(include_input=False, include_url=False):
        names = [str(part) for part in problem["loc"]]
        variable = "CITYTEL_" + (names[0].upper() if names else "?")
        reason = str(problem["msg"]).removeprefix("Value error, ")
        reason = reason.removeprefix(f"{variable} ")
        lines.append(
            f"invalid setting {variable}: {reason}; fix it, or unset it to use the default"
        )
    return lines


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, built on first use."""
    return Settings()
