def parse_config(text):
    config = {}
    for line in text.splitlines():
        key, value = line.split("=")
        config[key] = value
    return config
