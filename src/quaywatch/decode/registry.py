"""The list of protocol decoders. Adding a protocol adds one line here."""

from __future__ import annotations

from quaywatch.decode.base import Decoder
from quaywatch.decode.modbus import ModbusDecoder


def all_decoders() -> list[Decoder]:
    """Instances of every registered decoder, in probe order (most specific first)."""
    return [
        ModbusDecoder(),
    ]
