from listutils import dedupe


def test_len():
    assert len(dedupe([1, 1, 2])) == 2
