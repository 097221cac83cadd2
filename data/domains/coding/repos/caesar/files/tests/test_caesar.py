from cipher import encode


def test_encode():
    assert encode("abc", 1) == "bcd"
