from search import binary_search


def test_first():
    assert binary_search([1, 3, 5], 1) == 0
