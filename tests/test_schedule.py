"""Cadences: parsing, crontab weekdays, time zones and DST, catch-up after downtime."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from profilestore.config import load_settings
from profilestore.errors import CadenceError, ConfigError
from profilestore.schedule import (
    fire_times,
    next_due,
    parse_cadence,
    translate_day_of_week,
)

UTC = dt.UTC
PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")
SOCIAL = parse_cadence("cron 0 3 * * sun")


@pytest.mark.parametrize(
    ("field", "names"),
    [
        ("0", "sun"),
        ("7", "sun"),
        ("1", "mon"),
        ("6", "sat"),
        ("1-5", "mon,tue,wed,thu,fri"),
        ("5-7", "sun,fri,sat"),
        ("0,3", "sun,wed"),
        ("*/2", "sun,tue,thu,sat"),
        ("1-5/2", "mon,wed,fri"),
        ("sun", "sun"),
        ("SAT,sun", "sun,sat"),
        ("mon-fri", "mon,tue,wed,thu,fri"),
        ("*", "*"),
    ],
)
def test_crontab_weekday_numbers_count_from_sunday(field: str, names: str) -> None:
    assert translate_day_of_week(field) == names


@pytest.mark.parametrize("field", ["8", "funday", "5-1", "1/0"])
def test_impossible_weekdays_are_refused(field: str) -> None:
    with pytest.raises(CadenceError):
        translate_day_of_week(field)


def test_numeric_sunday_fires_on_sunday_not_monday() -> None:
    friday = dt.datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    (fire,) = fire_times(parse_cadence("cron 0 3 * * 0"), UTC, friday, 1)
    assert fire == dt.datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
    assert fire.strftime("%A") == "Sunday"
    weekdays = fire_times(parse_cadence("cron 30 9 * * 1-5"), UTC, friday, 5)
    assert [f.strftime("%a") for f in weekdays] == ["Mon", "Tue", "Wed", "Thu", "Fri"]


def test_weekly_dataset_fires_sunday_0300_in_the_configured_zone_across_dst() -> None:
    # Paris leaves summer time on Sunday 2026-10-25: 03:00 local moves from 01:00 to 02:00 UTC.
    before = dt.datetime(2026, 10, 14, 0, 0, tzinfo=UTC)
    fires = fire_times(SOCIAL, PARIS, before, 3)
    assert [f.astimezone(PARIS).strftime("%a %H:%M") for f in fires] == ["Sun 03:00"] * 3
    assert [f.astimezone(UTC).hour for f in fires] == [1, 2, 2]
    # New York enters summer time on Sunday 2027-03-14 at 02:00: 03:00 still exists.
    spring = fire_times(SOCIAL, NEW_YORK, dt.datetime(2027, 3, 5, tzinfo=UTC), 2)
    assert [f.astimezone(NEW_YORK).strftime("%d %H:%M") for f in spring] == [
        "07 03:00",
        "14 03:00",
    ]
    assert [f.astimezone(UTC).hour for f in spring] == [8, 7]


def test_a_run_missed_while_the_process_was_down_is_due_at_start() -> None:
    last = dt.datetime(2026, 11, 15, 3, 0, 5, tzinfo=UTC)  # Sunday's run
    on_time = dt.datetime(2026, 11, 18, 10, 0, tzinfo=UTC)
    assert next_due(SOCIAL, UTC, last, on_time) == dt.datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
    after_downtime = dt.datetime(2026, 11, 23, 9, 0, tzinfo=UTC)  # slept through Sunday
    assert next_due(SOCIAL, UTC, last, after_downtime) == after_downtime
    hourly = parse_cadence("every 1h")
    assert next_due(hourly, UTC, on_time, on_time + dt.timedelta(minutes=20)) == (
        on_time + dt.timedelta(hours=1)
    )
    assert next_due(hourly, UTC, on_time, on_time + dt.timedelta(hours=5)) == (
        on_time + dt.timedelta(hours=5)
    )


def test_a_dataset_that_never_ran_is_due_now_and_realtime_is_never_scheduled() -> None:
    now = dt.datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    assert next_due(SOCIAL, UTC, None, now) == now
    assert next_due(parse_cadence("realtime"), UTC, None, now) is None
    assert next_due(parse_cadence("manual"), UTC, None, now) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cron 0 3 1 * mon", "both day of month and day of week"),
        ("cron 61 3 * * *", "61"),
        ("cron 0 3 * *", "expected 5"),
        ("every 0m", "longer than zero"),
        ("every fortnight", "interval"),
        ("hourly", "not 'realtime'"),
    ],
)
def test_cadences_that_cannot_be_scheduled_are_refused(text: str, message: str) -> None:
    with pytest.raises(CadenceError, match=message):
        parse_cadence(text)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "profilestore.toml"
    path.write_text(text)
    return path


def test_a_bad_cron_in_config_names_the_file_and_field(tmp_path: Path) -> None:
    path = write(
        tmp_path, '[datasets]\nsocial = { projection = "projections.social", cron = "0 3 * * 9" }\n'
    )
    with pytest.raises(ConfigError) as raised:
        load_settings(path, environ={})
    assert raised.value.path == "datasets.social"
    assert str(path) in str(raised.value)
    assert "`cron`" in raised.value.reason and "'9'" in raised.value.reason


def test_schedule_settings_are_checked(tmp_path: Path) -> None:
    path = write(tmp_path, '[schedule]\ntimezone = "Mars/Olympus"\n')
    with pytest.raises(ConfigError) as raised:
        load_settings(path, environ={})
    assert raised.value.path == "schedule"
    assert "IANA" in raised.value.reason
    settings = load_settings(
        environ={
            "PROFILESTORE_SCHEDULE__TIMEZONE": "Europe/Paris",
            "PROFILESTORE_SCHEDULE__FOLLOWER_POLL_MS": "20",
        }
    )
    assert settings.schedule.timezone == "Europe/Paris"
    assert settings.schedule.follower_poll_ms == 20
