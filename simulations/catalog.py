"""The synthetic catalogue: English categories arranged in interest chains.

Users drift along a chain (life stage, season, hobby): after ``running shoes`` comes ``sports
watch``, then ``protein powder``. Some categories sit on two chains (``sports watch`` follows
``running shoes`` and also ``phone case``), so the next interest depends on where the user came
from, not only where they are: a first-order model over categories cannot see that, a model that
reads the history can.
"""

from __future__ import annotations

CHAINS: dict[str, tuple[str, ...]] = {
    "new baby": (
        "pregnancy test", "prenatal vitamins", "maternity dress", "baby crib",
        "baby formula", "diapers", "toddler shoes",
    ),
    "moving home": ("moving boxes", "sofa", "bed frame", "bedding set", "kitchen cookware", "houseplants"),
    "seasons": ("swimwear", "sunscreen", "beach towel", "rain jacket", "winter coat", "ski gloves"),
    "running": ("running shoes", "sports watch", "protein powder", "foam roller"),
    "gadgets": ("smartphone", "phone case", "sports watch", "wireless earbuds", "power bank"),
    "cooking": ("chef knife", "cutting board", "cast iron pan", "spice rack", "cookbook"),
    "gardening": ("garden gloves", "flower seeds", "watering can", "houseplants", "plant fertilizer"),
    "gaming": ("gaming console", "video game", "gaming headset", "wireless earbuds", "gaming chair"),
    "new puppy": ("puppy food", "dog leash", "dog bed", "chew toys", "pet shampoo"),
    "yoga": ("yoga mat", "yoga pants", "protein powder", "resistance bands", "dumbbells"),
}

ADJECTIVES: tuple[str, ...] = (
    "classic", "lightweight", "premium", "compact", "durable", "eco", "deluxe", "soft",
    "portable", "organic", "essential", "pro", "everyday", "comfort", "smart", "mini",
    "large", "family", "travel", "modern",
)
BRANDS: tuple[str, ...] = ("Acme", "Nordly", "Brightway", "Kumo", "Vela", "Orchid", "Tundra", "Pico")


def categories() -> tuple[str, ...]:
    """Distinct category names in first-appearance order."""
    seen: dict[str, None] = {}
    for chain in CHAINS.values():
        seen.update(dict.fromkeys(chain))
    return tuple(seen)


def item_title(category: str, rank: int) -> str:
    """A stable English title for the ``rank``-th item of ``category``."""
    adjective = ADJECTIVES[(rank * 7 + len(category)) % len(ADJECTIVES)]
    brand = BRANDS[(rank + len(category) * 3) % len(BRANDS)]
    return f"{brand} {adjective} {category}"
