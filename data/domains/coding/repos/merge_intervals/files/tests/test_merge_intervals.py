from intervals import length


def test_length():
    assert length((2, 5)) == 3
