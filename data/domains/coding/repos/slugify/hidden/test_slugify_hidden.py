from text_utils import slugify


def test_simple():
    assert slugify("Hello World") == "hello-world"


def test_punctuation():
    assert slugify("  Python: 3 Tips & Tricks!  ") == "python-3-tips-tricks"


def test_single():
    assert slugify("Agent") == "agent"


def test_empty():
    assert slugify("!!!") == ""
