from report import column_total


def test_one_row():
    assert column_total("x,y\n1,2\n", "y") == 2
