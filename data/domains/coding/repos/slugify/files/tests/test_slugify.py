from text_utils import shout


def test_shout():
    assert shout("hi") == "HI!"
