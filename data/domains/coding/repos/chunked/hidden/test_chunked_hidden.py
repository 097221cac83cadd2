import pytest

from batching import chunked


def test_even():
    assert chunked([1, 2, 3, 4], 2) == [[1, 2], [3, 4]]


def test_rest():
    assert chunked([1, 2, 3], 2) == [[1, 2], [3]]


def test_empty():
    assert chunked([], 3) == []


def test_bad_size():
    with pytest.raises(ValueError):
        chunked([1], 0)
