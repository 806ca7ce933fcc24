"""The read replica's lag, from the primary's WAL positions and the times they were read."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from citytel.config import Settings
from citytel.settings_help import shown
from citytel.storage.replica import LagClock


def test_a_quiet_primary_means_no_lag_however_old_its_last_commit() -> None:
    """The primary's position stays put and the standby has replayed it: the lag stays at zero."""
    clock = LagClock()
    for second in range(600):
        clock.primary_at(float(second), 5_000)
        lag_s, exact = clock.lag_s(5_000, second + 0.01)
        assert exact
        assert lag_s == pytest.approx(0.01)


def test_a_standby_that_stops_replaying_falls_behind_from_the_first_write_it_lacks() -> None:
    """Lag is the time since the newest primary position the standby has replayed."""
    clock = LagClock()
    clock.primary_at(0.0, 100)
    assert clock.lag_s(100, 0.0) == (0.0, True)
    clock.primary_at(1.0, 100)
    assert clock.lag_s(100, 1.0) == (0.0, True)
    # A write at 1.5 s; the standby stays at 100.
    clock.primary_at(2.0, 180)
    assert clock.lag_s(100, 2.0) == (1.0, True)
    clock.primary_at(9.0, 400)
    assert clock.lag_s(100, 9.0) == (8.0, True)
    # It replays up to the position read at 2 s, then everything.
    clock.primary_at(10.0, 400)
    assert clock.lag_s(180, 10.0) == (8.0, True)
    clock.primary_at(11.0, 400)
    assert clock.lag_s(400, 11.0) == (0.0, True)


def test_a_standby_behind_every_position_read_has_only_a_lower_bound() -> None:
    """Reconnected to a standby already behind: at least the time since the first read."""
    clock = LagClock()
    clock.primary_at(0.0, 1_000)
    assert clock.lag_s(10, 0.0) == (0.0, False)
    clock.primary_at(4.0, 1_000)
    assert clock.lag_s(10, 4.0) == (4.0, False)
    clock.forget()
    clock.primary_at(5.0, 1_000)
    assert clock.lag_s(10, 5.0) == (0.0, False)


def test_the_read_url_is_checked_and_masked() -> None:
    """A read URL that is no PostgreSQL URL is refused naming its setting; its password is
    never shown."""
    with pytest.raises(ValidationError, match="CITYTEL_DATABASE_READ_URL must look like"):
        Settings(database_read_url=SecretStr("mysql://u:p@h/db"))
    settings = Settings(database_read_url=SecretStr("postgresql://api:s3cret@replica:5432/citytel"))
    assert settings.database_read_where == "replica:5432/citytel"
    assert "s3cret" not in shown(settings.database_read_url)
    assert Settings(database_read_url=SecretStr("")).database_read_url is None
