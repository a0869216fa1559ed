"""Identities the oracles expose equal the inventory's: Modbus read device identification on ICSNPP's trace.

CIP identity (ICSNPP ``cip_identity.log``) and S7 module identification (``s7comm_known_devices.log``,
``s7comm_read_szl.log``) already have asset-level oracle tests in ``test_inventory.py``. ICSNPP's Modbus baseline
names the device that answered a Read Device Identification (``modbus_detailed.log``: responder, transaction,
unit, MEI type) but not the objects, so the values are read independently from the response bytes with dpkt.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from quaywatch.analysis import Analyzer
from quaywatch.assets.inventory import DEFAULT_LOCAL_NETWORKS, build_inventory
from quaywatch.decode.base import Direction
from quaywatch.decode.registry import all_decoders
from quaywatch.store.database import Store
from tests.decode.oracles import RESEARCH, Agreement, Row, read_log, require, tcp_streams

MODBUS = RESEARCH / "icsnpp-modbus/testing"
#: Modbus 43/14 basic object ids and the inventory attribute each becomes (quaywatch.assets.inventory.SOURCES).
OBJECT_ATTRIBUTES = {0: "vendor", 1: "model", 2: "firmware"}
BASIC_OBJECT_RULES = ("modbus_43_14_vendor_name", "modbus_43_14_product_code", "modbus_43_14_revision")


def device_identification_objects(capture: Path) -> list[Row]:
    """Every 43/14 response in the capture, parsed here from the raw TCP payload: transaction and basic objects."""
    rows: list[Row] = []
    for stream in tcp_streams(capture, 502):
        for direction, payload, _ in stream:
            offset = 0
            while direction is Direction.TO_CLIENT and offset + 8 <= len(payload):
                transaction, _, length = struct.unpack_from(">HHH", payload, offset)
                pdu = payload[offset + 7 : offset + 6 + length]
                offset += 6 + length
                if len(pdu) < 7 or pdu[0] != 0x2B or pdu[1] != 0x0E:
                    continue
                row: Row = {"transaction": str(transaction)}
                position, count = 7, pdu[6]
                for _ in range(count):
                    object_id, size = pdu[position], pdu[position + 1]
                    value = pdu[position + 2 : position + 2 + size].decode("latin-1").strip()
                    if object_id in OBJECT_ATTRIBUTES:
                        row[OBJECT_ATTRIBUTES[object_id]] = value
                    position += 2 + size
                rows.append(row)
    return rows


@pytest.mark.oracle
def test_modbus_device_identification_equals_the_oracle(tmp_path: Path) -> None:
    detailed = read_log(MODBUS / "baseline/analyzer.basic/modbus_detailed.log")
    (answered,) = [row for row in detailed if row.get("mei_type") == "Read Device Identification"]
    capture = require(MODBUS / "traces/modbus_example.pcap")
    store = Store(tmp_path / "q.duckdb")
    Analyzer(store, decoders=all_decoders()).analyze(capture)
    # The trace runs over loopback: its addresses are this site's own network here.
    build_inventory(store, local_networks=[*DEFAULT_LOCAL_NETWORKS, "127.0.0.0/8"])
    con = store.connection
    responder = [answered["id.resp_h"]]
    (asset_id,) = con.execute("SELECT asset_id FROM assets WHERE list_contains(ips, ?)", responder).fetchone()  # type: ignore[misc]
    rows = con.execute(
        "SELECT attribute, value, evidence FROM asset_attributes WHERE asset_id = ? AND list_contains(?, rule)",
        [asset_id, list(BASIC_OBJECT_RULES)],
    ).fetchall()
    (packet,) = con.execute(
        "SELECT packet_number FROM modbus WHERE function_code = 43 AND direction = 'to_client' AND transaction_id = ?",
        [int(str(answered["tid"]))],
    ).fetchone()  # type: ignore[misc]
    store.close()
    ours: Row = {"transaction": answered["tid"]}
    for attribute, value, evidence in rows:
        assert attribute not in ours, f"{attribute} twice"
        ours[attribute] = value
        assert any(reference.endswith(f":{packet}") for reference in evidence), (attribute, evidence)
    theirs = device_identification_objects(capture)
    agreement = Agreement(["transaction", *OBJECT_ATTRIBUTES.values()])
    agreement.score([ours], theirs, key=lambda row: row["transaction"])
    print("\n" + agreement.report("modbus 43/14 identity vs ICSNPP responder and the response bytes"))
    assert agreement.unmatched_ours == agreement.unmatched_theirs == 0
    assert all(agreement.compared.get(name) == 1 and agreement.ratio(name) == 1.0 for name in agreement.fields)
