from words import word_count


def test_case_insensitive():
    assert word_count("The the THE") == {"the": 3}


def test_punctuation():
    assert word_count("Hello, world! Hello.") == {"hello": 2, "world": 1}


def test_empty():
    assert word_count("") == {}


def test_simple():
    assert word_count("a b a") == {"a": 2, "b": 1}
