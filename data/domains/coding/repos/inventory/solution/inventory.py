class Inventory:
    def __init__(self):
        self.stock = {}

    def add(self, item, count=1):
        self.stock[item] = self.stock.get(item, 0) + count

    def remove(self, item, count=1):
        have = self.stock.get(item, 0)
        if count > have:
            raise ValueError(f"only {have} {item} in stock")
        if have == count:
            del self.stock[item]
        else:
            self.stock[item] = have - count

    def count(self, item):
        return self.stock.get(item, 0)
