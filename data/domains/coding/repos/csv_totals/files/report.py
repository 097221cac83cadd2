def column_total(csv_text, column):
    lines = csv_text.strip().splitlines()
    header = lines[0].split(",")
    index = header.index(column)
    return sum(float(line.split(",")[index]) for line in lines)
