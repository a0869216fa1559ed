"""Real MaxMind DB files for tests, written with mmdb-writer (the reader under test is maxminddb)."""

from __future__ import annotations

from pathlib import Path

from mmdb_writer import MMDBWriter
from netaddr import IPSet


def write_mmdb(path: Path, database_type: str, networks: dict[str, dict[str, object]]) -> Path:
    """An IPv6 database with IPv4 mapped in, as MaxMind and DB-IP ship theirs; ``networks``: CIDR -> record."""
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type=database_type, description="quaywatch test")
    for network, record in networks.items():
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))
    return path
