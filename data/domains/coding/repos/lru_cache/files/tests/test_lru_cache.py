import cache


def test_module():
    assert cache.__doc__
