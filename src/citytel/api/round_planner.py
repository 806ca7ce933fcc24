"""A collection round made whole in a planning worker process: read, sort out, order, encode.

A round reads the state of every container in its area (20,000 rows for a city), sorts out
those due, orders up to 200 of them and encodes the answer. In the API process each of those
steps took the interpreter from the event loop, and the light routes (free-spot searches,
thousands a second) waited behind them: sorting out in a thread still holds the interpreter's
lock in turns, and decoding the fleet's rows and building the answer ran in the loop itself.
Here all of it runs in a worker process of the planning gate (api/planning.py), at a lower CPU
priority than the API: the API process passes the question and sends back the bytes.

The worker reads over its own connection (psycopg, synchronous: the worker has nothing else to
do meanwhile) from the database the API would read from at that moment (the read replica while
it keeps up, else the primary), and keeps each area's fleet for ``CITYTEL_API_PLANNING_CACHE_S``
so that rounds asked with different thresholds share one read.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from citytel.api.routes.containers import container_public, fill_state
from citytel.api.schemas import CollectionRound, CollectionStop, Location
from citytel.collection import Stop, due_first, plan_round, reaches_at
from citytel.storage.queries import COLLECTION_CANDIDATES, BBox

# Areas whose fleet is kept at once; past it the oldest read is dropped.
_MAX_FLEETS = 64
_CONNECT_TIMEOUT_S = 10


@dataclass(frozen=True, slots=True)
class RoundQuestion:
    """What a round is planned from: the request's parameters and where to read the fleet."""

    database_url: str
    zone: str | None
    box: BBox | None
    threshold_pct: float
    within_h: float
    start: tuple[float, float] | None
    max_stops: int
    fleet_kept_s: float


class FleetUnreadableError(Exception):
    """The worker could not read the fleet: the database is unreachable (a 503, retry)."""


Fleet = tuple[list[dict[str, Any]], datetime]

# Per worker process: one connection per database, and the fleets read lately.
_connections: dict[str, psycopg.Connection[dict[str, Any]]] = {}
_fleets: dict[tuple[str, str | None, BBox | None], tuple[float, Fleet]] = {}


def pyformat(sql: str) -> str:
    """``sql`` written with asyncpg's ``$n`` parameters, in psycopg's ``%(pn)s`` style."""
    return re.sub(r"\$(\d+)", r"%(p\1)s", sql.replace("%", "%%"))


_CANDIDATES = pyformat(COLLECTION_CANDIDATES)


def plan_collection_round(question: RoundQuestion) -> bytes:
    """The round's JSON (a :class:`CollectionRound`).

    Raises:
        FleetUnreadableError: the database could not be read.
    """
    rows, now = _fleet(question)
    horizon = now + timedelta(hours=question.within_h)
    due = []
    for row in rows:
        due_at = reaches_at(fill_state(row), question.threshold_pct)
        if due_at is not None and due_at <= horizon:
            due.append((Stop(row["id"], row["lat"], row["lon"]), due_at))
    selected, left_out = due_first(due, question.max_stops)
    planned = plan_round(question.start, [stop for stop, _ in selected])
    due_at_of = {stop.id: due_at for stop, due_at in selected}
    by_id = {row["id"]: row for row in rows}
    stops, travelled = [], 0.0
    for order, (stop, leg) in enumerate(zip(planned.stops, planned.legs_m, strict=True), 1):
        travelled += leg
        stops.append(
            CollectionStop(
                order=order,
                container=container_public(by_id[stop.id]),
                due_at=due_at_of[stop.id],
                leg_m=round(leg, 1),
                cumulative_m=round(travelled, 1),
            )
        )
    start = question.start
    answer = CollectionRound(
        generated_at=now,
        zone=question.zone,
        threshold_pct=question.threshold_pct,
        within_h=question.within_h,
        start=Location(lat=start[0], lon=start[1]) if start is not None else None,
        stops=stops,
        length_m=round(planned.length_m, 1),
        left_out=left_out,
    )
    return answer.model_dump_json().encode()


def _fleet(question: RoundQuestion) -> Fleet:
    """The containers with a fill level in the question's area, and the database's now."""
    area = (question.database_url, question.zone, question.box)
    kept = _fleets.get(area)
    if kept is not None and kept[0] > time.monotonic():
        return kept[1]
    asked = time.monotonic()
    box = question.box
    parameters = {
        "p1": question.zone,
        "p2": box.min_lon if box else None,
        "p3": box.min_lat if box else None,
        "p4": box.max_lon if box else None,
        "p5": box.max_lat if box else None,
    }
    try:
        fleet = _read(question.database_url, parameters)
    except psycopg.OperationalError:
        # A connection the server closed meanwhile (restart, failover) fails once: a new one.
        _forget_connection(question.database_url)
        try:
            fleet = _read(question.database_url, parameters)
        except psycopg.OperationalError as exc:
            _forget_connection(question.database_url)
            message = "the database could not be read to plan the round; retry shortly"
            raise FleetUnreadableError(message) from exc
    if question.fleet_kept_s > 0:
        if len(_fleets) >= _MAX_FLEETS:
            _fleets.pop(next(iter(_fleets)))
        _fleets[area] = (asked + question.fleet_kept_s, fleet)
    return fleet


def _read(url: str, parameters: Mapping[str, object]) -> Fleet:
    conn = _connection(url)
    rows = conn.execute(_CANDIDATES, parameters).fetchall()
    now: datetime = conn.execute("SELECT now() AS now").fetchone()["now"]  # type: ignore[index]
    return rows, now


def _forget_connection(url: str) -> None:
    conn = _connections.pop(url, None)
    if conn is not None:
        conn.close()


def _connection(url: str) -> psycopg.Connection[dict[str, Any]]:
    conn = _connections.get(url)
    if conn is not None and not conn.closed:
        return conn
    try:
        conn = psycopg.connect(
            url,
            autocommit=True,
            row_factory=dict_row,
            connect_timeout=_CONNECT_TIMEOUT_S,
            # As asyncpg gives them to the API: times in UTC.
            options="-c TimeZone=UTC",
            application_name="citytel-planning",
        )
    except psycopg.OperationalError as exc:
        message = "the database could not be reached to plan the round; retry shortly"
        raise FleetUnreadableError(message) from exc
    _connections[url] = conn
    return conn
