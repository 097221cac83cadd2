from palindrome import is_palindrome


def test_sentence():
    assert is_palindrome("A man, a plan, a canal: Panama")


def test_mixed_case():
    assert is_palindrome("RaceCar")


def test_not():
    assert not is_palindrome("python")


def test_empty():
    assert is_palindrome("")
