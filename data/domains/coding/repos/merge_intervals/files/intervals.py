def length(interval):
    start, end = interval
    return end - start
