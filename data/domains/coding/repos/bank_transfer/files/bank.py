class Bank:
    def __init__(self):
        self.balances = {}

    def open(self, name, amount=0):
        self.balances[name] = amount

    def transfer(self, source, target, amount):
        self.balances[source] -= amount
        if self.balances[source] < 0:
            raise ValueError("insufficient funds")
        self.balances[target] += amount
