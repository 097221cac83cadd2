import pytest

from temperature import celsius_to_fahrenheit, fahrenheit_to_celsius


def test_boiling():
    assert celsius_to_fahrenheit(100) == pytest.approx(212)


def test_body():
    assert celsius_to_fahrenheit(37) == pytest.approx(98.6)


def test_back():
    assert fahrenheit_to_celsius(212) == pytest.approx(100)
    assert fahrenheit_to_celsius(32) == pytest.approx(0)


def test_round_trip():
    assert fahrenheit_to_celsius(celsius_to_fahrenheit(-40)) == pytest.approx(-40)
