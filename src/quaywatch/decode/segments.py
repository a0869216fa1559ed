"""Which TCP segments of a batch may bypass reassembly and the per-segment session call.

A polled protocol's flow sends one whole request or response per segment, in order. For such a flow the
dispatcher lets a decoder's vectorised path (``Decoder.decode_segments``) decode a prefix of the flow's
segments in the batch: every segment up to the first one that is out of order, cut by the snap length, not
of a shape the path decodes, or of a flow whose session holds a partial message. Taking a prefix per flow,
never a subset, keeps the session's state exact for the segments that follow.
"""

from __future__ import annotations

import numpy as np
from numba import njit

SEQUENCE_MODULO = 1 << 32


@njit(cache=True)
def in_order_prefix(
    slots: np.ndarray, sides: np.ndarray, sequences: np.ndarray, lengths: np.ndarray, accepted: np.ndarray,
    next_sequence: np.ndarray,
) -> np.ndarray:  # fmt: skip
    """Per segment: in the flow's fast prefix. ``next_sequence[slot, side]`` (-1: unknown) advances in place."""
    count = slots.shape[0]
    fast = np.zeros(count, np.bool_)
    stopped = np.zeros(next_sequence.shape[0], np.bool_)
    for index in range(count):
        slot = slots[index]
        if stopped[slot]:
            continue
        side = sides[index]
        expected = next_sequence[slot, side]
        if accepted[index] and expected >= 0 and sequences[index] == expected:
            fast[index] = True
            next_sequence[slot, side] = (expected + lengths[index]) % SEQUENCE_MODULO
        else:
            stopped[slot] = True
    return fast
