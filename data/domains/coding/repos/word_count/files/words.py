def word_count(text):
    """How often each word occurs in `text`."""
    counts = {}
    for word in text.split():
        counts[word] = counts.get(word, 0) + 1
    return counts
