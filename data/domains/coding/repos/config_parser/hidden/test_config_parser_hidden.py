from config import parse_config


def test_whitespace():
    assert parse_config(" host = example.org \nport=80") == {"host": "example.org", "port": "80"}


def test_comments_and_blanks():
    assert parse_config("# settings\n\nmode = fast\n") == {"mode": "fast"}


def test_equals_in_value():
    assert parse_config("url = a=b") == {"url": "a=b"}
