"""DHCPv4 against tshark's dhcp dissector (the oracle), field by field, through the real pipeline.

Run with ``-s`` to see the agreement table. The research corpus holds no DHCP at all: a bounded tshark scan
(``-Y dhcp``) of every capture under 3 MB in research-data found none, Zeek's btest baselines there have no
dhcp.log, suricata-verify no dhcp case and the nDPI results no DHCP flow. The inputs are therefore a synthetic
capture (``common.synthetic_frames``: a DORA exchange, a rogue modem's offer, relay, NAK, INFORM, RELEASE,
DECLINE, option overload, sname/file), checked by tshark itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.decode.dhcp.common import Record, analyse, synthetic_frames
from tests.decode.oracles import Agreement, Row, compare_by_packet, presence, tshark_values
from tests.factories import write_pcap

pytestmark = pytest.mark.oracle

#: tshark field -> our comparison column; tshark prints each field's occurrences joined by ",".
TSHARK = {
    "frame.number": "packet",
    "dhcp.type": "op",
    "dhcp.hw.type": "htype",
    "dhcp.hw.len": "hlen",
    "dhcp.hops": "hops",
    "dhcp.id": "xid",
    "dhcp.secs": "secs",
    "dhcp.flags.bc": "broadcast",
    "dhcp.ip.client": "ciaddr",
    "dhcp.ip.your": "yiaddr",
    "dhcp.ip.server": "siaddr",
    "dhcp.ip.relay": "giaddr",
    "dhcp.hw.mac_addr": "client_mac",
    "dhcp.server": "server_name",
    "dhcp.file": "boot_file",
    "dhcp.option.dhcp": "message_type",
    "dhcp.option.hostname": "hostname",
    "dhcp.option.vendor_class_id": "vendor_class_id",
    "dhcp.option.request_list_item": "parameter_request_string",
    "dhcp.option.requested_ip_address": "requested_ip",
    "dhcp.option.dhcp_server_id": "server_id",
    "dhcp.option.router": "routers",
    "dhcp.option.subnet_mask": "subnet_mask",
    "dhcp.option.domain_name_server": "dns_servers",
    "dhcp.option.domain_name": "domain_name",
    "dhcp.option.ip_address_lease_time": "lease_time",
    "dhcp.option.renewal_time_value": "renewal_time",
    "dhcp.option.rebinding_time_value": "rebinding_time",
    "dhcp.option.dhcp_max_message_size": "max_message_size",
    "dhcp.option.message": "message",
    "dhcp.fqdn.name": "client_fqdn",
    "dhcp.option.option_overload": "overload",
    "dhcp.option.type": "options",
    "dhcp.option.value": "values",
}
#: Research captures with DHCP (none in this corpus snapshot; see the module docstring).
FIELDS = [name for name in TSHARK.values() if name not in ("packet", "values")] + ["client_id", "defined"]
#: Numbers tshark may print in hex: compared as integers.
NUMERIC = {"op", "htype", "hlen", "hops", "xid", "secs", "message_type", "overload", "max_message_size"}
#: Fields where every occurrence counts; the rest take the first (tshark repeats dhcp.hw.type and
#: dhcp.hw.mac_addr inside a client identifier of type 1).
LISTS = {"parameter_request_string", "routers", "dns_servers", "options"}
#: ``defined`` (the names of the fields a row fills) catches a field that only one side fills.
PRESENCE = [name for name in FIELDS if name != "defined"]


def tshark_rows(capture: Path) -> list[Row]:
    rows = []
    for values in tshark_values(capture, "dhcp", TSHARK):
        row: Row = {}
        for name, items in values.items():
            if name in LISTS:
                row[name] = ",".join(items) if items else None
            elif not items:
                row[name] = None
            else:
                row[name] = str(int(items[0], 0)) if name in NUMERIC else items[0]
        # tshark 4.0 shows the END option's dhcp.option.type as 0 (PDML: show="0" value="ff"); pads are never
        # listed as options (they are dhcp.option.padding), so a 0 here is always END (RFC 2132 section 3.2).
        codes = (row["options"] or "").split(",") if row["options"] else []
        row["options"] = ",".join("255" if code == "0" else code for code in codes) or None
        # dhcp.option.value holds the raw value of every option but END, in order: pick the client identifier's.
        raw = values["values"]
        valued = [code for code in codes if code != "0"]
        row["client_id"] = dict(zip(valued, raw, strict=False)).get("61")
        row["broadcast"] = {"1": "True", "0": "False"}.get(row["broadcast"] or "", row["broadcast"])
        if row["server_name"] == "" or row["boot_file"] == "":
            row["server_name"] = row["server_name"] or None
            row["boot_file"] = row["boot_file"] or None
        row.pop("values")
        row["defined"] = presence(row, PRESENCE)
        rows.append(row)
    return rows


def our_rows(rows: list[Record]) -> list[Row]:
    result = []
    for r in rows:
        row: Row = {"packet": str(r["packet_number"])}
        for name in FIELDS:
            value = r.get(name)
            if value is None:
                row[name] = None
            elif isinstance(value, list):
                row[name] = ",".join(map(str, value))
            elif isinstance(value, bytes):
                row[name] = value.hex()
            else:
                row[name] = str(value)
        row["defined"] = presence(row, PRESENCE)
        result.append(row)
    return result


def compare(tmp_path: Path, captures: list[Path], title: str) -> Agreement:
    return compare_by_packet(FIELDS, captures, title, lambda capture: analyse(tmp_path, capture), our_rows, tshark_rows)


def test_synthetic_messages_agree_with_tshark(tmp_path: Path) -> None:
    capture = write_pcap(tmp_path / "synthetic.pcap", [(1.0 + i, f) for i, f in enumerate(synthetic_frames())])
    agreement = compare(tmp_path, [capture], "tshark dhcp, synthetic messages")
    assert agreement.unmatched_ours == agreement.unmatched_theirs == 0
    for name in FIELDS:
        assert agreement.compared.get(name), f"{name}: the synthetic capture should exercise it"
        assert agreement.ratio(name) == 1.0, agreement.report(name)
