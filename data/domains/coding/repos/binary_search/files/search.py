def binary_search(items, target):
    """Index of `target` in the sorted list `items`, or -1."""
    low, high = 0, len(items) - 1
    while low < high:
        mid = (low + high) // 2
        if items[mid] == target:
            return mid
        if items[mid] < target:
            low = mid
        else:
            high = mid - 1
    return -1
