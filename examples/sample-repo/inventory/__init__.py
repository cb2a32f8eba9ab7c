"""Inventory service: items, stock levels and reports."""

from inventory.core import Inventory, Item

__all__ = ["Inventory", "Item"]
