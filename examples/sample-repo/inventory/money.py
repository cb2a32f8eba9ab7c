"""Money helpers: amounts are integer cents to avoid float rounding."""

CENTS = 100


def to_cents(amount: float) -> int:
    return round(amount * CENTS)


def format_cents(cents: int, currency: str = "EUR") -> str:
    return f"{cents // CENTS}.{cents % CENTS:02d} {currency}"
