"""Plain-text stock report."""

from inventory.core import Inventory
from inventory.money import format_cents


def render_report(inv: Inventory, threshold: int = 3) -> str:
    lines = [f"total: {inv.describe()}"]
    for item in inv.low_stock(threshold):
        lines.append(f"low: {item.name} ({item.quantity}) at {format_cents(item.price_cents)}")
    return "\n".join(lines)
