from calendar_utils import days_in_year, is_leap_year


def test_century():
    assert not is_leap_year(1900)
    assert not is_leap_year(2100)


def test_400():
    assert is_leap_year(2000)


def test_plain():
    assert is_leap_year(2024) and not is_leap_year(2023)


def test_days():
    assert days_in_year(1900) == 365 and days_in_year(2000) == 366
