from words import word_count


def test_simple():
    assert word_count("a b a") == {"a": 2, "b": 1}
