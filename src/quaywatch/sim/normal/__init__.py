"""Normal terminal operations, one behaviour per module.

To add a behaviour: write a ``Source`` subclass in a module here and add it to
``NORMAL_SOURCES`` (one import line, one list entry).
"""

from __future__ import annotations

from quaywatch.sim.engine import Source
from quaywatch.sim.normal.polling import CranePolling

NORMAL_SOURCES: list[type[Source]] = [
    CranePolling,
]
