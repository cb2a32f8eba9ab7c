"""Command line entry point of the inventory service."""

import sys

from inventory.core import Inventory
from inventory.report import render_report


def main(argv: list[str]) -> int:
    inv = Inventory()
    inv.add("A-1", "bolt", 0.25, 400)
    inv.add("B-2", "nut", 0.1, 2)
    print(render_report(inv))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
