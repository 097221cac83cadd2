def transpose(matrix):
    return [list(row) for row in zip(*matrix)]


def shape(matrix):
    return (len(matrix), len(matrix[0]) if matrix else 0)
