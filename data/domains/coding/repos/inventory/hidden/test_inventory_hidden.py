import pytest

from inventory import Inventory


def test_remove():
    inv = Inventory()
    inv.add("apple", 3)
    inv.remove("apple", 2)
    assert inv.count("apple") == 1


def test_too_many():
    inv = Inventory()
    inv.add("apple", 1)
    with pytest.raises(ValueError):
        inv.remove("apple", 2)
    assert inv.count("apple") == 1


def test_zero_is_removed():
    inv = Inventory()
    inv.add("pear")
    inv.remove("pear")
    assert "pear" not in inv.stock


def test_unknown():
    with pytest.raises(ValueError):
        Inventory().remove("kiwi")
