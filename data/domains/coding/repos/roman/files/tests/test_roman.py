from roman import NUMERALS


def test_table():
    assert NUMERALS[0] == (1000, "M")
