"""Helper threads of a two-worker analysis (store writer, sha256, content scans) give way to the thread that decodes.

The decoding thread (Python, holding the GIL) is the critical path; the helpers (hashing, content
scans, DuckDB inserts) release the GIL and together need less than one core, but in bursts. At the default
priority the scheduler shares the two cores equally among all runnable threads, so a burst of three helpers
slows the decoding thread; a lower priority (a higher nice value, Linux sets it per thread) keeps it on its core
and gives the helpers the other one and any idle time.
"""

from __future__ import annotations

import os
import threading
from contextlib import suppress

#: Added to the helper threads' nice value (0-19): enough for the scheduler to favour the decoding thread.
HELPER_NICENESS = 10


def give_way() -> None:
    """Lower the calling thread's scheduling priority (nothing where the system does not allow it)."""
    # Not Linux, or not allowed: the helpers keep the default priority.
    with suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HELPER_NICENESS)
