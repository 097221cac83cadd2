import pytest

from stack import Stack


def test_lifo():
    s = Stack()
    for i in range(3):
        s.push(i)
    assert [s.pop(), s.pop(), s.pop()] == [2, 1, 0]


def test_pop_empty_raises():
    with pytest.raises(IndexError):
        Stack().pop()


def test_peek_is_top():
    s = Stack()
    s.push("a")
    s.push("b")
    assert s.peek() == "b"
    assert len(s) == 2


def test_peek_empty_raises():
    with pytest.raises(IndexError):
        Stack().peek()
