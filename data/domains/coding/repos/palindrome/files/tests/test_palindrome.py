from palindrome import is_palindrome


def test_word():
    assert is_palindrome("level")
