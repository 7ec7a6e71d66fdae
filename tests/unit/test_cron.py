"""Schedules and zones: what the operator refuses beyond the CRD's pattern, and what both accept."""

from __future__ import annotations

import re

import pydantic
import pytest

from kubetask import model


@pytest.mark.parametrize(("schedule", "fields"), [
    ("* * * * *", "* * * * *"),
    ("*/15 * * * *", "*/15 * * * *"),
    ("0 3 * * MON-FRI", "0 3 * * MON-FRI"),
    ("0 0 1,15 jan-jun 0", "0 0 1,15 jan-jun 0"),
    ("5-55/10 0-23/2 * * 7", "5-55/10 0-23/2 * * 7"),
    ("@hourly", "0 * * * *"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@weekly", "0 0 * * 0"),
    ("@monthly", "0 0 1 * *"),
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
])
def test_good_schedules_and_macros(schedule: str, fields: str) -> None:
    assert model.cron_expression(schedule) == fields
    assert re.match(model.CRON_PATTERN, schedule)


@pytest.mark.parametrize("schedule", [
    "* * * *", "* * * * * *", "61 * * * *", "0 24 * * *", "0 0 0 * *", "0 0 * 13 *", "0 0 * * 8",
    "*/0 * * * *", "@often", "@every 5m", "CRON_TZ=UTC 0 * * * *", "TZ=UTC 0 * * * *", " * * * * *", "",
    "0 0 * * MON,", "a b c d e",
])
def test_bad_schedules_fail_the_crds_pattern_and_the_operators_check(schedule: str) -> None:
    assert not re.match(model.CRON_PATTERN, schedule)
    with pytest.raises(ValueError, match="spec.schedule"):
        model.cron_expression(schedule)


def test_a_schedule_that_never_fires_passes_the_pattern_but_not_the_operators_check() -> None:
    assert re.match(model.CRON_PATTERN, "0 0 30 2 *")
    with pytest.raises(ValueError, match=r"spec.schedule '0 0 30 2 \*' never fires"):
        model.cron_expression("0 0 30 2 *")


@pytest.mark.parametrize("zone", ["UTC", "Europe/Paris", "America/Argentina/Buenos_Aires", "Etc/GMT+5"])
def test_good_zones(zone: str) -> None:
    assert model.time_zone(zone).key == zone


@pytest.mark.parametrize(("zone", "shaped"), [
    ("Mars/Olympus", True), ("Europe/Pariss", True), ("Not A Zone", False), ("../etc/passwd", False),
    ("/usr/share/zoneinfo/UTC", False),
])
def test_bad_zones_name_the_field(zone: str, shaped: bool) -> None:
    assert bool(re.match(model.TIME_ZONE_PATTERN, zone)) == shaped
    with pytest.raises(ValueError, match="spec.timeZone"):
        model.time_zone(zone)


def test_the_spec_model_checks_what_the_operator_checks() -> None:
    good = model.TaskScheduleSpec.model_validate({"schedule": "@hourly", "template": {"type": "echo"}})
    assert good.time_zone == "UTC" and good.concurrency_policy == model.ConcurrencyPolicy.ALLOW
    for spec, field in [({"schedule": "0 0 30 2 *"}, "spec.schedule"), ({"timeZone": "Mars/Olympus"}, "spec.timeZone"),
                        ({"template": {"type": "echo", "runAt": "2030-01-01T00:00:00Z"}}, "spec.template.runAt")]:
        with pytest.raises(pydantic.ValidationError, match=re.escape(field)):
            model.TaskScheduleSpec.model_validate({"schedule": "@hourly", "template": {"type": "echo"}, **spec})
