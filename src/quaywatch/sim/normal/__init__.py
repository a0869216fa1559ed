"""Normal terminal operations, one behaviour per module.

To add a behaviour: write a ``Source`` subclass in a module here and add it to
``NORMAL_SOURCES`` (one import line, one list entry).
"""

from __future__ import annotations

from quaywatch.sim.engine import Source
from quaywatch.sim.normal.background import NetworkBackground
from quaywatch.sim.normal.cctv import CctvStreams
from quaywatch.sim.normal.corporate import CorporateBrowsing
from quaywatch.sim.normal.engineering import Engineering
from quaywatch.sim.normal.ocr_edi import OcrEdi
from quaywatch.sim.normal.polling import CranePolling

NORMAL_SOURCES: list[type[Source]] = [
    CranePolling,
    NetworkBackground,
    CctvStreams,
    CorporateBrowsing,
    OcrEdi,
    Engineering,
]
