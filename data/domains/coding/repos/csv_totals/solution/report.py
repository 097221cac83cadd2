import csv
import io


def column_total(csv_text, column):
    reader = csv.DictReader(io.StringIO(csv_text.strip()))
    return sum(float(row[column]) for row in reader if row[column].strip())
