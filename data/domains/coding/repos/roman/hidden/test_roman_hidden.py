import pytest

from roman import to_roman


def test_small():
    assert to_roman(4) == "IV"
    assert to_roman(9) == "IX"


def test_year():
    assert to_roman(1994) == "MCMXCIV"


def test_max():
    assert to_roman(3999) == "MMMCMXCIX"


def test_range():
    with pytest.raises(ValueError):
        to_roman(0)
