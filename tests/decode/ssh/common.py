"""Shared pieces of the SSH tests: oracle locations and running the analyser on a trace."""

from __future__ import annotations

from pathlib import Path

import pytest

from quaywatch.decode.base import Decoder
from quaywatch.decode.ssh import SshDecoder
from tests.decode.oracles import RESEARCH, analysed_tables

ZEEK = RESEARCH / "zeek-btest/testing/btest"
SURICATA = RESEARCH / "suricata-verify/tests"
NDPI = RESEARCH / "ndpi/tests/cfgs/default"

Record = dict[str, object]


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"research data missing: {path}")
    return path


def analyse(
    tmp_path: Path, capture: Path, decoders: list[Decoder] | None = None
) -> tuple[list[Record], list[Record], dict[str, int]]:
    """The ssh rows and anomalies of one capture, in capture order, through the real pipeline."""
    tables = analysed_tables(tmp_path, capture, decoders or [SshDecoder()], ["ssh", "anomaly"])
    return tables["ssh"], tables["anomaly"], {}


def per_connection(rows: list[Record]) -> dict[tuple[object, ...], Record]:
    """Fold banner, kexinit and negotiated rows into one record per connection (client/server 4-tuple)."""
    flows: dict[tuple[object, ...], Record] = {}
    for row in rows:
        key = (row["client_ip"], row["client_port"], row["server_ip"], row["server_port"])
        flow = flows.setdefault(key, {})
        side = "client" if row["direction"] == "to_server" else "server"
        if row["event_type"] == "banner":
            flow[side] = row["banner"]
            flow[f"{side}_proto_version"] = row["proto_version"]
            flow[f"{side}_software_version"] = row["software_version"]
        elif row["event_type"] == "kexinit":
            flow[f"{side}_hassh"] = row["hassh"]
            flow[f"{side}_hassh_algorithms"] = row["hassh_algorithms"]
        elif row["event_type"] == "negotiated":
            flow.update({name: row[name] for name in ("kex_alg", "host_key_alg", "cipher_alg", "mac_alg")})
            flow["compression_alg"] = row["compression_alg"]
    return flows
