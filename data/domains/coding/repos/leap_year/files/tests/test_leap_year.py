from calendar_utils import is_leap_year


def test_2024():
    assert is_leap_year(2024)
