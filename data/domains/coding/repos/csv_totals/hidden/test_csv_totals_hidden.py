from report import column_total

DATA = "region,sales,units\nnorth,100.5,3\nsouth,200,5\n"


def test_sales():
    assert column_total(DATA, "sales") == 300.5


def test_units():
    assert column_total(DATA, "units") == 8


def test_quoted():
    assert column_total('name,amount\n"Smith, J",10\n"Doe, A",5\n', "amount") == 15
