"""BACnet against CISA ICSNPP-BACnet's btest baselines (bacnet, bacnet_discovery, bacnet_property and
bacnet_device_control logs), field by field, through the real pipeline.

Run with ``-s`` to see the per-field agreement tables. ts and uid are not compared (masked in the baselines).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.decode.bacnet.common import ICSNPP, Record, analyse
from tests.decode.oracles import Agreement, Row, read_log

pytestmark = pytest.mark.oracle

#: Baseline folder -> trace (testing/analyzer/*.zeek of ICSNPP and the research-data manifest).
CASES = {
    "analyzer.basic": "bacnet_example.pcap",
    "analyzer.error-reject-abort": "bacnet_error_reject_abort.pcap",
    "analyzer.segmented_data": "bacnet_segmented_data.pcap",
    "analyzer.services": "bacnet_services.pcap",
}
ID = ["id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "is_orig", "source_h", "source_p", "destination_h",
      "destination_p"]  # fmt: skip
HEADER_FIELDS = [*ID, "bvlc_function", "pdu_type", "pdu_service", "invoke_id", "result_code"]
DISCOVERY_FIELDS = [*ID, "pdu_service", "device_id_type", "device_id_number", "object_type", "instance_number",
                    "vendor", "range", "object_name"]  # fmt: skip
PROPERTY_FIELDS = [*ID, "invoke_id", "pdu_service", "object_type", "instance_number", "property", "array_index",
                   "value"]  # fmt: skip
CONTROL_FIELDS = [*ID, "invoke_id", "pdu_service", "time_duration", "device_state", "password_present",
                  "password_length", "result", "result_code"]  # fmt: skip
#: The baselines went through btest's timestamp canonifier, which also rewrites every "0.000000" in a value.
_CANON = re.compile(r"[0-9]{10}\.[0-9]{6}|0\.000000")

_BITS = re.compile(r"[TF]+")
_TIME = re.compile(r"(\d+):(\d+):(\d+)\.(\d+)")


def _representation(ours: str | None, theirs: str | None) -> str | None:
    """Their value written our way where only the text form differs, not the decoded value.

    - Bit strings (status-flags, protocol-services-supported ...): ICSNPP prints every bit of the data octets,
      the unused trailing bits too. ASHRAE 135-2020 clause 20.2.10: the initial octet gives the number of unused
      bits in the last octet, which are not part of the value; status-flags has 4 bits, so 'FTFF' not 'FTFFFFFF'.
    - Times: ICSNPP prints '9:3:38.0'; we print hh:mm:ss.hh ('09:03:38.00'), the same four octets (20.2.13).
    """
    if ours is None or theirs is None:
        return theirs
    unused = len(theirs) - len(ours)
    bits = _BITS.fullmatch(ours) and _BITS.fullmatch(theirs) and len(theirs) % 8 == 0 and 0 < unused < 8
    if bits and theirs.startswith(ours) and "T" not in theirs[len(ours) :]:
        return ours
    time = _TIME.fullmatch(theirs)
    if time and _TIME.fullmatch(ours):
        hour, minute, second, hundredths = (int(part) for part in time.groups())
        return f"{hour:02d}:{minute:02d}:{second:02d}.{hundredths:02d}"
    return theirs


#: Rows only one side writes, per (case, log): (ours, oracle), each explained.
UNMATCHED = {
    # ASHRAE 135-2020 clause 5.3 / 20.1.2.4: every segment of a segmented message is its own APDU and datagram;
    # we keep a bacnet row per segment, ICSNPP logs only the first segment of a reassembled message.
    ("analyzer.segmented_data", "bacnet"): (2, 0),
    ("analyzer.services", "bacnet"): (1, 0),
    # Clause 15.10 WritePropertyMultiple: we write a property row per property written (two here); ICSNPP does
    # not parse WritePropertyMultiple.
    ("analyzer.error-reject-abort", "bacnet_property"): (2, 0),
    # ICSNPP also logs Error-PDUs that answer ReadProperty into bacnet_property ('ERROR: read_property', the
    # error code in object_type); ours are bacnet rows with error_class/error_code (clause 20.1.7).
    ("analyzer.services", "bacnet_property"): (0, 2),
}
#: Fields below 100% after the representation above, and why (the rest of each agrees in full). Not compared
#: because ours is null: the array index ICSNPP logs as 0 for a ReadRange that has none (clause 15.8.1.1.3: the
#: index is optional and absent in bacnet_error_reject_abort.pcap), and names of proprietary properties and
#: object types (ICSNPP 'Vendor Specific (512)'; ours keep the number in property_id / object_type_code).
EXPLAINED = {
    # Clause 21 BACnetPropertyIdentifier 24 is daylight-savings-status; ICSNPP's table spells it
    # 'daylights-savings-status' (2 rows of 8,424).
    ("analyzer.services", "bacnet_property", "property"),
}


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "T" if value else "F"
    return str(value)


def _envelope(record: Record) -> Row:
    to_server = record["direction"] == "to_server"
    client = (_text(record["client_ip"]), _text(record["client_port"]))
    server = (_text(record["server_ip"]), _text(record["server_port"]))
    source, destination = (client, server) if to_server else (server, client)
    return {
        "id.orig_h": client[0], "id.orig_p": client[1], "id.resp_h": server[0], "id.resp_p": server[1],
        "is_orig": "T" if to_server else "F", "source_h": source[0], "source_p": source[1],
        "destination_h": destination[0], "destination_p": destination[1],
    }  # fmt: skip


def header_log(records: list[Record]) -> list[Row]:
    """Our bacnet rows in the shape of ICSNPP's bacnet.log (its main.zeek bacnet_header event)."""
    out = []
    for r in records:
        kind = r["pdu_type_code"]
        result = r["bvlc_result"] if r["bvlc_function_code"] == 0 else None
        if kind == 5:
            result = r["error_code"]
        elif kind in (6, 7):
            result = r["reason"]
        service = r["service"] if kind in (0, 1, 2, 3, 5) else None  # ICSNPP names no service for 4, 6, 7
        pdu_type = r["pdu_type"]
        if r["network_message"]:  # ICSNPP: pdu_type NPDU, the message type as the service
            pdu_type, service = "NPDU", r["network_message_type"]
        out.append(
            {**_envelope(r), "bvlc_function": _text(r["bvlc_function"]), "pdu_type": _text(pdu_type),
             "pdu_service": _text(service), "invoke_id": _text(r["invoke_id"]), "result_code": _text(result)}
        )  # fmt: skip
    return out


def discovery_log(records: list[Record]) -> list[Row]:
    out = []
    for r in records:
        service = str(r["service"])
        row = {**_envelope(r), "pdu_service": service.replace("_", "-"), "device_id_type": None,
               "device_id_number": None, "vendor": _text(r["vendor"]),
               "object_name": _text(r["object_name"])}  # fmt: skip
        if service == "i_am":
            row.update(object_type=_text(r["device_object_type"]), instance_number=_text(r["device_instance"]))
        else:
            row.update(object_type=_text(r["object_type"]), instance_number=_text(r["object_instance"]))
        if service == "i_have":
            row.update(device_id_type=_text(r["device_object_type"]), device_id_number=_text(r["device_instance"]))
        if service in ("who_is", "who_has"):
            low = r["low_limit"]
            row["range"] = "All" if low is None else f"{low}-{r['high_limit']}"
        if service == "who_has" and r["object_name"] is None:
            row["object_name"] = "N/A"
        out.append(row)
    return out


_PROPERTY_SERVICES = {
    ("read_property", "request"): "read-property-request",
    ("read_property", "ack"): "read-property-ack",
    ("write_property", "request"): "write-property",
    ("read_property_multiple", "request"): "read-property-multiple-request",
    ("read_property_multiple", "ack"): "read-property-multiple-ack",
    ("write_property_multiple", "request"): "write-property-multiple",
    ("read_range", "request"): "read-range-request",
}


def _canon(text: str | None) -> str | None:
    return None if text is None else _CANON.sub("XXXXXXXXXX.XXXXXX", text)


def property_log(records: list[Record]) -> list[Row]:
    """ICSNPP writes one row per value of a list or array: ours (one row per property) is unfolded the same way."""
    out = []
    for r in records:
        base = {**_envelope(r), "invoke_id": _text(r["invoke_id"]),
                "pdu_service": _PROPERTY_SERVICES[(str(r["service"]), str(r["message"]))],
                "object_type": _text(r["object_type"]), "instance_number": _text(r["object_instance"]),
                "property": _text(r["property"]), "array_index": _text(r["array_index"])}  # fmt: skip
        values = r["values"] if r["values"] is not None else [] if r["value_count"] == 0 else [r["value"]]
        for value in values:  # type: ignore[attr-defined]
            out.append({**base, "value": _canon(value)})
    return out


def control_log(records: list[Record]) -> list[Row]:
    return [
        {**_envelope(r), "invoke_id": _text(r["invoke_id"]), "pdu_service": _text(r["service"]),
         "time_duration": _text(r["time_duration"]), "device_state": _text(r["state"]),
         "password_present": _text(r["password_present"]), "password_length": _text(r["password_length"]),
         "result": _text(r["result"]), "result_code": _text(r["error_code"])}
        for r in records
    ]  # fmt: skip


def icsnpp_control(rows: list[Row]) -> list[Row]:
    """ICSNPP logs the password itself; we compare only whether one was sent, and its length."""
    for row in rows:
        password = row.pop("password", None)
        if row.get("device_state") is not None and password:  # '(empty)': absent or empty, ICSNPP cannot tell
            row["password_present"], row["password_length"] = "T", str(len(password))
    return rows


def _key(*names: str):  # type: ignore[no-untyped-def]
    return lambda row: tuple(row.get(name) for name in names)


LOGS = {
    "bacnet": (header_log, "bacnet", HEADER_FIELDS, _key("is_orig", "pdu_type", "invoke_id", "pdu_service")),
    "bacnet_discovery": (discovery_log, "bacnet_discovery", DISCOVERY_FIELDS, _key("pdu_service", "source_h")),
    "bacnet_property": (
        property_log,
        "bacnet_property",
        PROPERTY_FIELDS,
        _key("invoke_id", "pdu_service", "instance_number"),
    ),
    "bacnet_device_control": (control_log, "bacnet_device_control", CONTROL_FIELDS, _key("invoke_id", "is_orig")),
}


def agreement_of(tmp_path: Path, case: str) -> dict[str, Agreement]:
    tables = analyse(tmp_path, ICSNPP / "traces" / CASES[case])
    result = {}
    for log, (shape, table, fields, key) in LOGS.items():
        path = ICSNPP / "baseline" / case / f"{log}.log"
        if not path.exists():
            continue
        theirs = read_log(path)
        if log == "bacnet_device_control":
            theirs = icsnpp_control(theirs)
        ours = shape(tables[table])
        if log == "bacnet_discovery":
            _undecoded_names(ours, theirs)
        agreement = Agreement(fields)
        agreement.score(ours, theirs, key=key)
        if log == "bacnet_property":  # score again with the text representation of their values aligned to ours
            agreement = Agreement(fields)
            aligned = [dict(row) for row in theirs]
            _align_values(ours, aligned, key)
            agreement.score(ours, aligned, key=key)
        result[log] = agreement
    return result


def _undecoded_names(ours: list[Row], theirs: list[Row]) -> None:
    """ICSNPP decodes only character set 0 and logs '' for other object names (clause 20.2.9: set 1 is DBCS with
    a 2-octet code page; these I-Have names are Shift-JIS, code page 932, such as '温度２'). Such an empty name is
    'not decoded', not a value: it is left out of the comparison, and counted."""
    names = {(r["source_h"], r["instance_number"]): r["object_name"] for r in ours if r["pdu_service"] == "i-have"}
    for row in theirs:
        mine = names.get((row["source_h"], row["instance_number"]))
        if row["pdu_service"] == "i-have" and row["object_name"] == "" and mine and not mine.isascii():
            row["object_name"] = None
            UNDECODED.append(mine)


UNDECODED: list[str] = []


def _align_values(ours: list[Row], theirs: list[Row], key) -> None:  # type: ignore[no-untyped-def]
    import difflib

    matcher = difflib.SequenceMatcher(a=[key(r) for r in ours], b=[key(r) for r in theirs], autojunk=False)
    for block in matcher.get_matching_blocks():
        for offset in range(block.size):
            other = theirs[block.b + offset]
            other["value"] = _representation(ours[block.a + offset]["value"], other["value"])


@pytest.mark.parametrize("case", sorted(CASES))
def test_logs_agree_with_icsnpp(tmp_path: Path, case: str) -> None:
    for log, agreement in agreement_of(tmp_path, case).items():
        report = agreement.report(f"icsnpp {case} {log}.log")
        print("\n" + report)
        assert (agreement.unmatched_ours, agreement.unmatched_theirs) == UNMATCHED.get((case, log), (0, 0)), report
        for name in agreement.fields:
            assert agreement.ratio(name) >= 0.99, report
            if (case, log, name) not in EXPLAINED:
                assert agreement.ratio(name) == 1.0, report
    assert agreement_of  # every baseline folder has at least the bacnet log


def test_every_case_is_compared() -> None:
    folders = {path.name for path in (ICSNPP / "baseline").iterdir()} if (ICSNPP / "baseline").exists() else set()
    assert folders <= set(CASES)
