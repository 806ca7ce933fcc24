"""The retention setting is a period citytel can compare readings with, or a clear error."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from citytel.config import Settings


@pytest.mark.parametrize(
    ("text", "period"),
    [
        ("400 days", timedelta(days=400)),
        ("2 years", timedelta(days=730)),
        ("1 month", timedelta(days=28)),
        ("12 weeks", timedelta(weeks=12)),
    ],
)
def test_retention_is_read_as_its_shortest_length(text: str, period: timedelta) -> None:
    """Months and years count as their shortest length: never refuse what would be kept."""
    assert Settings(timescale_retention=text).retention_period == period


def test_a_retention_that_is_no_period_is_refused() -> None:
    """A value like 'forever' stops start-up with a message naming the setting's field."""
    with pytest.raises(ValidationError, match="timescale_retention"):
        Settings(timescale_retention="forever")


def test_aggregates_must_outlive_the_readings() -> None:
    """An aggregate retention not longer than the raw one stops start-up naming both settings."""
    assert Settings(timescale_aggregate_retention="401 days").timescale_retention == "400 days"
    with pytest.raises(ValidationError, match="CITYTEL_TIMESCALE_AGGREGATE_RETENTION"):
        Settings(timescale_retention="2 years", timescale_aggregate_retention="1 year")
    with pytest.raises(ValidationError, match="timescale_aggregate_retention"):
        Settings(timescale_aggregate_retention="forever")
