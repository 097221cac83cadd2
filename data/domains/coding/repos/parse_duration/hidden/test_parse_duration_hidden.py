import pytest

from durations import parse_duration


def test_hours_minutes():
    assert parse_duration("1h30m") == 5400


def test_seconds():
    assert parse_duration("45s") == 45


def test_all():
    assert parse_duration("1h2m3s") == 3723
    assert parse_duration("2h") == 7200


def test_bad():
    for bad in ("", "abc", "1x", "h"):
        with pytest.raises(ValueError):
            parse_duration(bad)
