class Bank:
    def __init__(self):
        self.balances = {}

    def open(self, name, amount=0):
        self.balances[name] = amount

    def transfer(self, source, target, amount):
        if source not in self.balances or target not in self.balances:
            raise ValueError("unknown account")
        if amount <= 0:
            raise ValueError("amount must be positive")
        if self.balances[source] < amount:
            raise ValueError("insufficient funds")
        self.balances[source] -= amount
        self.balances[target] += amount
