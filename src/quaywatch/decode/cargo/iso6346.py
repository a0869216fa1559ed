"""ISO 6346 container identification: owner code, category, serial, check digit.

Letters take the values A=10 upwards, skipping multiples of 11 (A10 B12 ... K21
L23 ... U32 V34 ... Z38); the check digit is the sum of value * 2**position
over the first ten characters, mod 11, mod 10 (docs/domain-maritime.md,
section 5). About one random 11-character match in ten passes by chance, so a
detector counts distinct valid ids rather than trusting one.
"""

from __future__ import annotations

LETTER_VALUES: dict[str, int] = {}
_value = 10
for _letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
    if _value % 11 == 0:
        _value += 1
    LETTER_VALUES[_letter] = _value
    _value += 1
CATEGORIES = frozenset("UJZ")


def check_digit(first_ten: str) -> int:
    """The check digit of an owner code + category + six-digit serial."""
    total = sum(
        (int(char) if char.isdigit() else LETTER_VALUES[char]) << index for index, char in enumerate(first_ten.upper())
    )
    return total % 11 % 10


def normalise(text: str) -> str:
    """``CSQU 305438 3`` and ``csqu-305438-3`` -> ``CSQU3054383``."""
    return "".join(char for char in text.upper() if char.isalnum())


def is_valid(container: str) -> bool:
    """A well-formed id whose check digit is right."""
    value = normalise(container)
    if len(value) != 11 or not value[:3].isalpha() or value[3] not in CATEGORIES or not value[4:].isdigit():
        return False
    return check_digit(value[:10]) == int(value[10])


def container_id(owner: str, serial: int) -> str:
    """A valid id from a four-letter owner code with category (``MSKU``) and a serial."""
    first_ten = f"{owner.upper()}{serial:06d}"
    return first_ten + str(check_digit(first_ten))
