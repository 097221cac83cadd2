from cipher import decode, encode


def test_decode():
    assert decode("bcd", 1) == "abc"


def test_round_trip():
    text = "Hello, World! 123"
    for shift in (1, 13, 25, 40):
        assert decode(encode(text, shift), shift) == text


def test_case_kept():
    assert decode("Uryyb", 13) == "Hello"
