def transpose(matrix):
    n = len(matrix)
    return [[matrix[j][i] for j in range(n)] for i in range(n)]


def shape(matrix):
    return (len(matrix), len(matrix[0]) if matrix else 0)
