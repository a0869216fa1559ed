"""Community ID v1 against the specification's published baseline vectors."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import numpy as np
import pytest

from quaywatch.flows.community_id import community_id, community_ids

VECTORS = json.loads((Path(__file__).parent / "data" / "community_id_vectors.json").read_text())["vectors"]


@pytest.mark.parametrize(("seed", "protocol", "source", "destination", "sport", "dport", "expected"), VECTORS)
def test_published_vector(
    seed: int, protocol: int, source: str, destination: str, sport: int | None, dport: int | None, expected: str
) -> None:
    result = community_id(
        protocol, ipaddress.ip_address(source).packed, ipaddress.ip_address(destination).packed,
        sport or 0, dport or 0, seed=seed,
    )  # fmt: skip
    assert result == expected


def halves(text: str) -> tuple[int, int]:
    address = ipaddress.ip_address(text)
    value = int(ipaddress.IPv6Address(f"::ffff:{address}")) if address.version == 4 else int(address)
    return value >> 64, value & ((1 << 64) - 1)


@pytest.mark.parametrize("seed", [0, 1])
def test_vectorised_form_agrees_with_the_vectors(seed: int) -> None:
    rows = [v for v in VECTORS if v[0] == seed]
    source = [halves(v[2]) for v in rows]
    destination = [halves(v[3]) for v in rows]
    result = community_ids(
        np.array([v[1] for v in rows]),
        np.array([s[0] for s in source], np.uint64), np.array([s[1] for s in source], np.uint64),
        np.array([d[0] for d in destination], np.uint64), np.array([d[1] for d in destination], np.uint64),
        np.array([v[4] or 0 for v in rows]), np.array([v[5] or 0 for v in rows]), seed=seed,
    )  # fmt: skip
    assert result == [v[6] for v in rows]
