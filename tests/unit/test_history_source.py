"""Which store answers a history query: the daily or hourly aggregate, or the raw readings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from citytel.storage.queries import history_source

MIDNIGHT = datetime(2026, 5, 4, tzinfo=UTC)


@pytest.mark.parametrize(
    ("start", "end", "bucket", "source"),
    [
        (MIDNIGHT, MIDNIGHT + timedelta(days=7), timedelta(days=1), "daily"),
        (MIDNIGHT, MIDNIGHT + timedelta(days=28), timedelta(days=7), "daily"),
        (MIDNIGHT, MIDNIGHT + timedelta(days=1), timedelta(hours=1), "hourly"),
        (MIDNIGHT + timedelta(hours=5), MIDNIGHT + timedelta(days=2), timedelta(days=1), "hourly"),
        (MIDNIGHT, MIDNIGHT + timedelta(hours=12), timedelta(hours=3), "hourly"),
        (MIDNIGHT, MIDNIGHT + timedelta(hours=12), timedelta(minutes=90), "raw"),
        (MIDNIGHT + timedelta(minutes=5), MIDNIGHT + timedelta(hours=6), timedelta(hours=1), "raw"),
        # Another offset, the same instants: alignment is on UTC boundaries.
        (
            MIDNIGHT.astimezone(datetime.fromisoformat("2026-01-01T00:00+01:00").tzinfo),
            MIDNIGHT + timedelta(days=1),
            timedelta(days=1),
            "daily",
        ),
    ],
)
def test_the_coarsest_aggregate_that_covers_the_same_readings(
    start: datetime, end: datetime, bucket: timedelta, source: str
) -> None:
    """An aggregate serves only whole buckets of its own over a range on its boundaries."""
    assert history_source(start=start, end=end, bucket=bucket, aggregates=True) == source


def test_raw_readings_without_aggregates() -> None:
    """On plain PostgreSQL every bucket is computed from the raw readings."""
    day = timedelta(days=1)
    assert history_source(start=MIDNIGHT, end=MIDNIGHT + day, bucket=day, aggregates=False) == "raw"
