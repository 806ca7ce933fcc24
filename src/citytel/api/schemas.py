"""What the API returns, named for what each thing is."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from citytel.domain import Reason
from citytel.keys import Scope

# The largest id PostgreSQL's bigint holds: a larger one cannot name anything, so it is a 422.
MAX_ID = 2**63 - 1
# Times a query may name: a day inside Python's calendar, so that a default range of a day
# before or after one never leaves it.
EARLIEST = datetime(1, 1, 2, tzinfo=UTC)
LATEST = datetime(9999, 12, 30, tzinfo=UTC)


def within_calendar(value: datetime) -> datetime:
    """``value`` if it lies between 0001-01-02 and 9999-12-30 UTC, else ValueError saying so."""
    try:
        inside = EARLIEST <= value.astimezone(UTC) <= LATEST
    except OverflowError:
        inside = False
    if not inside:
        message = "must be between 0001-01-02 and 9999-12-30 (UTC)"
        raise ValueError(message)
    return value


class Location(BaseModel):
    """A WGS 84 point."""

    lat: float
    lon: float


class ContainerPublic(BaseModel):
    """A waste container and its latest known state."""

    id: str
    zone: str
    location: Location
    capacity_l: int
    depth_mm: int
    waste_kind: str
    fill_pct: float | None = Field(description="latest fill level, 0-100; null before any reading")
    battery_pct: float | None
    temperature_c: float | None
    measured_at: datetime | None = Field(description="when the latest fill level was measured")
    last_seen: datetime | None = Field(description="when the sensor was last heard from")
    fill_rate_pct_per_h: float | None = Field(
        description="mean filling rate since it was last emptied (percentage points per hour); "
        "null until known; never negative (a reading below the cycle's start begins a new cycle)"
    )
    predicted_full_at: datetime | None = Field(
        description="when it will be 100 % full at that rate; null when unknown or not filling"
    )


class ContainerPage(BaseModel):
    """One page of containers, fullest first."""

    items: list[ContainerPublic]
    total: int = Field(description="how many containers match the filters in all")
    limit: int
    offset: int
    next_offset: int | None = Field(description="offset of the next page; null on the last page")


class ReadingPublic(BaseModel):
    """One fill-level reading."""

    ts: datetime
    fill_pct: float
    battery_pct: float | None
    temperature_c: float | None


class BucketPublic(BaseModel):
    """Readings of one time bucket, averaged."""

    ts: datetime = Field(description="start of the bucket")
    fill_pct: float = Field(description="mean fill level in the bucket")
    min_fill_pct: float
    max_fill_pct: float
    battery_pct: float | None
    temperature_c: float | None
    readings: int


class ContainerReadings(BaseModel):
    """A container's history over a time range."""

    container_id: str
    start: datetime = Field(serialization_alias="from")
    end: datetime = Field(serialization_alias="to")
    bucket: str | None
    readings: list[ReadingPublic] | None = None
    buckets: list[BucketPublic] | None = None


class SpotPublic(BaseModel):
    """A parking spot and its latest known state."""

    id: str
    zone: str
    category: str
    location: Location
    status: Literal["free", "occupied", "unknown"]
    status_since: datetime | None = Field(description="time of the reading that set the status")
    battery_pct: float | None
    last_seen: datetime | None


class SpotPage(BaseModel):
    """One page of parking spots, by id."""

    items: list[SpotPublic]
    total: int = Field(description="how many spots match the filters in all")
    limit: int
    offset: int
    next_offset: int | None = Field(description="offset of the next page; null on the last page")


class FreeSpot(SpotPublic):
    """A free spot and how far it is."""

    distance_m: float


class FreeSpots(BaseModel):
    """The nearest free spots to a point, nearest first."""

    items: list[FreeSpot]
    lat: float
    lon: float
    radius_m: float
    as_of: datetime = Field(
        description="the answer holds every reading committed before this time (UTC)"
    )


class FullContainer(BaseModel):
    """A container over the zone threshold."""

    id: str
    fill_pct: float


class ZoneSummary(BaseModel):
    """A zone at a glance."""

    zone: str
    threshold_pct: float
    containers_total: int
    containers_reporting: int
    mean_fill_pct: float | None
    containers_over_threshold: list[FullContainer]
    spots_total: int
    spots_free: int
    spots_occupied: int
    spots_unknown: int


class OccupancyBucket(BaseModel):
    """A zone's parking occupancy in one time bucket."""

    ts: datetime = Field(description="start of the bucket")
    occupied_ratio: float = Field(
        description="share of readings saying occupied, per reporting spot, averaged over spots"
    )
    spots_reporting: int = Field(description="spots with at least one reading in the bucket")
    readings: int
    arrivals: int = Field(
        description="vehicles that parked: readings saying occupied after one saying free"
    )
    turnover: float = Field(
        description="arrivals per parking spot of the zone (vehicles per spot in the bucket)"
    )


class ZoneOccupancy(BaseModel):
    """A zone's parking occupancy over a time range."""

    zone: str
    start: datetime = Field(serialization_alias="from")
    end: datetime = Field(serialization_alias="to")
    bucket: str
    buckets: list[OccupancyBucket]


class ForecastPointPublic(BaseModel):
    """A zone's expected parking at one moment ahead."""

    ts: datetime
    hours_ahead: float
    occupied_ratio: float = Field(description="expected share of the known spots occupied")
    typical_occupied_ratio: float | None = Field(
        description="the typical week's ratio at that moment (none without history there)"
    )
    free_spots: float = Field(description="free spots expected among the known spots")


class ParkingForecast(BaseModel):
    """Free spots a zone should have over the next hours."""

    zone: str
    as_of: datetime
    weeks: int = Field(description="past weeks the typical week is taken over")
    time_zone: str
    decay_hours: float = Field(description="how fast today's deviation fades toward the profile")
    spots_total: int
    spots_known: int = Field(description="spots with a reading in the last day")
    spots_free: int = Field(description="free spots now")
    points: list[ForecastPointPublic]


class WasteDay(BaseModel):
    """A zone's waste service on one local day."""

    day: date
    containers_reporting: int
    collections: int = Field(description="emptyings detected: a drop of more than 15 points")
    overflow_hours: float = Field(
        description="container-hours at 100 %: a reading holds until the next (24 h at most)"
    )
    mean_fill_at_collection_pct: float | None = Field(
        description="mean fill of the reading before each emptying"
    )


class WasteKpis(BaseModel):
    """A zone's waste KPIs per day."""

    zone: str
    start: date = Field(serialization_alias="from")
    end: date = Field(serialization_alias="to")
    time_zone: str
    days: list[WasteDay]


class WeekHour(BaseModel):
    """A zone's occupancy in one hour of the typical week."""

    day_of_week: int = Field(description="ISO day of the week: 1 is Monday, 7 Sunday")
    hour: int = Field(description="hour of the day, 0 to 23, in the requested time zone")
    occupied_ratio: float
    spot_hours: int = Field(description="spot-hours with readings the mean is taken over")


class ZoneWeek(BaseModel):
    """A zone's typical week: occupancy per hour of the week over the last weeks."""

    zone: str
    weeks: int
    time_zone: str
    start: datetime = Field(serialization_alias="from")
    end: datetime = Field(serialization_alias="to")
    hours: list[WeekHour]


class ZonePublic(BaseModel):
    """A zone and what it holds."""

    zone: str
    containers: int
    spots: int


class Health(BaseModel):
    """Liveness or readiness."""

    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)
    replica_lag_s: float | None = Field(
        default=None,
        description="with a read replica: how far it is behind the primary, in seconds "
        "(absent while it cannot be measured)",
    )


class Problem(BaseModel):
    """An error: what went wrong, in a sentence, and details by parameter when there are some."""

    detail: str
    errors: list[dict[str, str]] = Field(default_factory=list)


class DeadLetterPublic(BaseModel):
    """A message that could not become readings, as it arrived, with the reason."""

    id: int
    topic: str
    reason: str
    detail: str = Field(description="what is wrong, in a sentence")
    payload_base64: str = Field(description="the payload, or its first 64 KiB when truncated")
    payload_text: str | None = Field(description="the payload, when it is UTF-8 text")
    payload_bytes: int = Field(description="the whole payload's size")
    payload_truncated: bool = Field(
        description="only the first 64 KiB was kept: the letter cannot be replayed"
    )
    first_received_at: datetime
    last_received_at: datetime
    times_received: int


class DeadLetterPage(BaseModel):
    """One page of dead letters, newest first."""

    items: list[DeadLetterPublic]
    total: int
    limit: int
    offset: int


class ReplayRequest(BaseModel):
    """Which dead letters to replay: by id, or by reason and time; ``all`` for every one."""

    model_config = ConfigDict(extra="forbid")

    ids: list[Annotated[int, Field(ge=1, le=MAX_ID)]] | None = Field(
        default=None, max_length=10_000
    )
    reason: Reason | None = None
    since: Annotated[AwareDatetime, AfterValidator(within_calendar)] | None = None
    until: Annotated[AwareDatetime, AfterValidator(within_calendar)] | None = None
    all: bool = False
    limit: int = Field(default=1000, ge=1, le=10_000)


class ReplayResult(BaseModel):
    """What a replay did."""

    replayed: int
    resolved: int = Field(description="dead letters whose message now stored, removed")
    still_dead: int
    readings_stored: int
    still_dead_by_reason: dict[str, int]
    truncated: int = Field(
        description="letters not run because only their first 64 KiB was kept (they stay)"
    )


class CollectionStop(BaseModel):
    """A container to empty, in visiting order."""

    order: int = Field(description="1 for the first stop")
    container: ContainerPublic
    due_at: datetime = Field(description="when it reaches the threshold (past: it already has)")
    leg_m: float = Field(description="great-circle distance from the previous stop or the start")
    cumulative_m: float


class CollectionRound(BaseModel):
    """The containers due for collection, in a short visiting order."""

    generated_at: datetime
    zone: str | None
    threshold_pct: float
    within_h: float
    start: Location | None
    stops: list[CollectionStop]
    length_m: float = Field(description="great-circle length of the round, start to last stop")
    left_out: int = Field(description="due containers beyond max_stops, the least urgent ones")


class DeviceProblem(BaseModel):
    """One reason a device needs attention."""

    problem: Literal["fault", "silent", "never_heard", "low_battery"]
    detail: str = Field(description="what is wrong, in words")
    since: datetime | None = Field(description="when it started, when known")


class DeviceAttention(BaseModel):
    """A device that needs a technician, and why."""

    device_kind: Literal["waste", "parking"]
    id: str
    zone: str
    location: Location
    last_seen: datetime | None
    battery_pct: float | None
    problems: list[DeviceProblem]


class DeviceAttentionPage(BaseModel):
    """Devices that need attention, the most pressing first."""

    items: list[DeviceAttention]
    total: int
    limit: int
    offset: int
    next_offset: int | None


class ApiKeyCreate(BaseModel):
    """A key to create: its name and scopes."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", examples=["dispatch-app"])
    scopes: list[Scope] = Field(min_length=1, max_length=len(Scope))


class ApiKeyPublic(BaseModel):
    """An API key as listed: never the key itself."""

    name: str
    scopes: list[Scope]
    created_at: datetime
    last_used_at: datetime | None = Field(description="to within the touch interval")
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyPublic):
    """A new key, with the key itself: shown this once, stored only as a hash."""

    key: str


class FleetReport(BaseModel):
    """What a fleet upload changed (or, in a dry run, would change), by device id."""

    containers: int = Field(description="containers in the upload")
    spots: int = Field(description="parking spots in the upload")
    added: list[str]
    moved: list[str]
    changed: list[str] = Field(description="zone, size, category or gateway changed")
    rebound: list[str] = Field(description="bound to another sensor")
    unchanged: int
    not_in_file: int = Field(description="registered devices the upload does not list (kept)")
    dry_run: bool


class DeviceProvisioned(BaseModel):
    """A container or spot after a create or update through the API."""

    created: bool
    device: dict[str, Any] = Field(description="its registry entry, with its sensor")


class AuditEntryPublic(BaseModel):
    """One change to the registry: who made it (an API key's name), what, before and after."""

    id: int
    at: datetime
    actor: str
    action: str = Field(examples=["container.update", "fleet.upload", "gateway.add"])
    object_kind: str
    object_id: str | None
    before: Any
    after: Any


class AuditPage(BaseModel):
    """A page of the audit table, newest first."""

    items: list[AuditEntryPublic]
    limit: int
    offset: int


class GatewayCreate(BaseModel):
    """A gateway to register."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", examples=["gw-0007"])
    name: str = Field(default="", max_length=200, pattern=r"^[^\x00]*$")
    lorawan_application: str | None = Field(
        default=None, min_length=1, max_length=200, pattern=r"^[^\x00]*$"
    )


class GatewayPublic(BaseModel):
    """A gateway as listed: never its password."""

    id: str
    name: str
    enabled: bool
    lorawan_application: str | None
    credential_version: int
    has_password: bool
    devices: int
    created_at: datetime
    last_seen_at: datetime | None
    broker_updated: bool | None = Field(
        default=None,
        description="after a change: whether the broker's files were rewritten and reloaded",
    )


class GatewayCreated(GatewayPublic):
    """A new gateway and its broker password, shown this once."""

    password: str
