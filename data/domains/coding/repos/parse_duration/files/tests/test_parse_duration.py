from durations import SECONDS


def test_units():
    assert SECONDS["m"] == 60
