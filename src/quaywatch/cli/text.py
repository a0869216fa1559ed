"""Make attacker-controlled text safe to print on a terminal."""

from __future__ import annotations

import re

from rich.markup import escape

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def terminal_safe(text: str) -> str:
    """Show control, bidi and zero-width characters as escapes and neutralise rich markup.

    Packet-derived strings can carry ANSI escape sequences that rewrite the
    analyst's screen, or bidi overrides that reorder what is shown.
    """
    visible = _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
    return escape(visible.replace("\n", "\\n").replace("\t", "\\t"))
