from batching import DEFAULT_SIZE


def test_default():
    assert DEFAULT_SIZE == 10
