from matrix import shape, transpose


def test_wide():
    assert transpose([[1, 2, 3]]) == [[1], [2], [3]]


def test_tall():
    assert transpose([[1, 2], [3, 4], [5, 6]]) == [[1, 3, 5], [2, 4, 6]]


def test_shape():
    assert shape(transpose([[1, 2, 3], [4, 5, 6]])) == (3, 2)
