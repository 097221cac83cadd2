import pytest

from bank import Bank


def make():
    bank = Bank()
    bank.open("ann", 100)
    bank.open("bob", 5)
    return bank


def test_transfer():
    bank = make()
    bank.transfer("ann", "bob", 30)
    assert bank.balances == {"ann": 70, "bob": 35}


def test_insufficient_changes_nothing():
    bank = make()
    with pytest.raises(ValueError):
        bank.transfer("bob", "ann", 50)
    assert bank.balances == {"ann": 100, "bob": 5}


def test_unknown_target_changes_nothing():
    bank = make()
    with pytest.raises(ValueError):
        bank.transfer("ann", "zed", 10)
    assert bank.balances == {"ann": 100, "bob": 5}


def test_negative_amount():
    bank = make()
    with pytest.raises(ValueError):
        bank.transfer("ann", "bob", -5)
