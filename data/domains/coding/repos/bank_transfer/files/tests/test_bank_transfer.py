from bank import Bank


def test_open():
    bank = Bank()
    bank.open("ann", 10)
    assert bank.balances["ann"] == 10
