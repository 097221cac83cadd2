def mean(values):
    return sum(values) / len(values)


def moving_average(values, window):
    if window <= 0:
        raise ValueError("window must be positive")
    return [mean(values[i:i + window]) for i in range(len(values) - window + 1)]
