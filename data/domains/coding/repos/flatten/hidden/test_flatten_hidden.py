from listutils import flatten


def test_deep():
    assert flatten([1, [2, [3, [4]]], 5]) == [1, 2, 3, 4, 5]


def test_flat():
    assert flatten([1, 2]) == [1, 2]


def test_keeps_tuples_and_strings():
    assert flatten([(1, 2), ["ab", ["c"]]]) == [(1, 2), "ab", "c"]


def test_empty():
    assert flatten([[], [[]]]) == []
