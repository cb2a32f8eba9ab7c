"""Items and the inventory that holds them."""

from dataclasses import dataclass, field

from inventory.money import format_cents, to_cents


@dataclass
class Item:
    sku: str
    name: str
    price_cents: int
    quantity: int = 0

    def value_cents(self) -> int:
        return self.price_cents * self.quantity


@dataclass
class Inventory:
    items: dict[str, Item] = field(default_factory=dict)

    def add(self, sku: str, name: str, price: float, quantity: int = 0) -> Item:
        item = Item(sku, name, to_cents(price), quantity)
        self.items[sku] = item
        return item

    def stock_total(self) -> int:
        """Total value of everything in stock, in cents."""
        return sum(item.value_cents() for item in self.items.values())

    def low_stock(self, threshold: int) -> list[Item]:
        return [item for item in self.items.values() if item.quantity < threshold]

    def describe(self) -> str:
        return format_cents(self.stock_total())
