class Inventory:
    def __init__(self):
        self.stock = {}

    def add(self, item, count=1):
        self.stock[item] = self.stock.get(item, 0) + count

    def remove(self, item, count=1):
        self.stock[item] = self.stock.get(item, 0) - count

    def count(self, item):
        return self.stock.get(item, 0)
