"""Modbus/TCP against suricata-verify's ``modbus`` case: its eve ``modbus`` records and its ``modbus:`` rules.

Run with ``-s`` to see the per-field agreement table.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable

import pytest

from quaywatch.decode.modbus import ModbusDecoder
from tests.decode.suricata_verify import Analyses, Case, Record, Tally, View, case_names, expected_alerts, flatten, load

pytestmark = pytest.mark.oracle

CASES = case_names(["modbus"])

#: sawp-modbus' FunctionCode names (what Suricata writes as ``function_code``); others are ``Unknown``.
FUNCTION_NAMES = {
    1: "RdCoils", 2: "RdDiscreteInputs", 3: "RdHoldRegs", 4: "RdInputRegs", 5: "WrSingleCoil", 6: "WrSingleReg",
    7: "RdExcStatus", 8: "Diagnostic", 9: "Program484", 10: "Poll484", 11: "GetCommEventCtr", 12: "GetCommEventLog",
    13: "ProgramController", 14: "PollController", 15: "WrMultCoils", 16: "WrMultRegs", 17: "ReportServerID",
    18: "Program884", 19: "ResetCommLink", 20: "RdFileRec", 21: "WrFileRec", 22: "MaskWrReg", 23: "RdWrMultRegs",
    24: "RdFIFOQueue", 43: "MEI",
}  # fmt: skip
EXCEPTION_NAMES = {
    1: "IllegalFunction", 2: "IllegalDataAddr", 3: "IllegalDataValue", 4: "ServerDeviceFail", 5: "Ack",
    6: "ServerDeviceBusy", 7: "NegAck", 8: "MemParityErr", 10: "GatewayPathUnavailable", 11: "GatewayTargetFailToResp",
}  # fmt: skip
#: sawp's AccessType bits, in declaration order (composite flags too: its Debug output lists every contained one).
ACCESS_FLAGS = [
    ("READ", 0x01), ("WRITE", 0x02), ("DISCRETES", 0x04), ("COILS", 0x08), ("INPUT", 0x10), ("HOLDING", 0x20),
    ("SINGLE", 0x40), ("MULTIPLE", 0x80), ("BIT_ACCESS_MASK", 0x0C), ("FUNC_MASK", 0x3C), ("WRITE_SINGLE", 0x42),
    ("WRITE_MULTIPLE", 0x82),
]  # fmt: skip
READ, WRITE, COILS, HOLDING = 0x01, 0x02, 0x08, 0x20
ACCESS = {1: READ | COILS, 2: READ | 0x04, 3: READ | HOLDING, 4: READ | 0x10, 5: COILS | 0x42, 6: HOLDING | 0x42,
          15: COILS | 0x82, 16: HOLDING | 0x82, 22: HOLDING | WRITE, 23: HOLDING | READ | 0x82}  # fmt: skip


def access_type(function: int) -> int:
    return ACCESS.get(function, 0)


def access_text(bits: int) -> str:
    names = [name for name, flag in ACCESS_FLAGS if bits & flag == flag]
    return " | ".join(names) if names else "NONE"


def category(row: Record) -> str:
    """sawp's CodeCategory of a message (Modbus Application Protocol V1.1b3 section 5 ranges)."""
    function = int(row["function_code"])  # type: ignore[call-overload]
    if row["event_type"] == "exception":
        return "NONE" if function in (8, 43) or function not in FUNCTION_NAMES else "PUBLIC_ASSIGNED"
    if function == 8:
        sub = row["sub_function"]
        return "RESERVED" if sub is None or 5 <= int(sub) <= 9 or int(sub) > 0x15 else "PUBLIC_ASSIGNED"  # type: ignore[call-overload]
    if function == 43:
        return "PUBLIC_ASSIGNED" if row["mei_type"] in (13, 14) else "RESERVED"
    if function in FUNCTION_NAMES:
        return "PUBLIC_ASSIGNED"
    bounds = [(9, "PUBLIC_UNASSIGNED"), (15, "RESERVED"), (41, "PUBLIC_UNASSIGNED"), (43, "RESERVED"),
              (65, "PUBLIC_UNASSIGNED"), (73, "USER_DEFINED"), (90, "PUBLIC_UNASSIGNED"), (92, "RESERVED"),
              (100, "PUBLIC_UNASSIGNED"), (111, "USER_DEFINED"), (125, "PUBLIC_UNASSIGNED"),
              (128, "RESERVED")]  # fmt: skip
    return next(name for bound, name in bounds if function < bound)


def message_view(prefix: str, row: Record) -> View:
    function = int(row["function_code"])  # type: ignore[call-overload]
    exception = row["event_type"] == "exception"
    view: View = {
        f"{prefix}.transaction_id": row["transaction_id"],
        f"{prefix}.unit_id": row["unit_id"],
        f"{prefix}.function_raw": function | (0x80 if exception else 0),
        f"{prefix}.function_code": FUNCTION_NAMES.get(function, "Unknown"),
        f"{prefix}.access_type": access_text(access_type(function)),
        f"{prefix}.category": category(row),
    }
    if exception:
        view[f"{prefix}.exception.raw"] = row["exception_code"]
        view[f"{prefix}.exception.code"] = EXCEPTION_NAMES.get(row["exception_code"], "Unknown")  # type: ignore[call-overload]
    elif function == 8:
        view[f"{prefix}.diagnostic.raw"] = row["sub_function"]
    return view


class Transaction:
    def __init__(self, number: int, flow: object) -> None:
        self.number = number
        self.flow = flow
        self.request: Record | None = None
        self.response: Record | None = None

    def view(self) -> View:
        view: View = {"modbus.id": self.number}
        if self.request is not None:
            view |= message_view("modbus.request", self.request)
        if self.response is not None:
            view |= message_view("modbus.response", self.response)
        return view


def transactions(rows: list[Record]) -> list[Transaction]:
    """Our messages grouped the way Suricata's modbus parser makes transactions (rust/src/modbus/modbus.rs).

    Per flow a request opens a transaction numbered from 1 (eve ``modbus.id``); a response joins the oldest
    transaction whose request has the same transaction id, unit id and function, else opens one of its own
    (an unsolicited response). A PDU with the exception bit sent by the connection's initiator makes none:
    Suricata parses it as a request of the function without the bit, whose address field is missing, and waits
    for bytes that never come (we record it as an ``exception`` row with an ``exception_from_client`` anomaly).
    """
    out: list[Transaction] = []
    counters: dict[object, int] = defaultdict(int)
    for row in sorted(rows, key=lambda r: int(r["packet_number"])):  # type: ignore[call-overload]
        if row["event_type"] not in ("request", "response", "exception"):
            continue
        flow = row["flow_id"]
        if row["direction"] == "to_server":
            if row["event_type"] == "exception":
                continue
            counters[flow] += 1
            tx = Transaction(counters[flow], flow)
            tx.request = row
            out.append(tx)
            continue
        key = (row["transaction_id"], row["unit_id"], row["function_code"])
        waiting = next(
            (t for t in out if t.flow == flow and t.response is None and t.request is not None
             and (t.request["transaction_id"], t.request["unit_id"], t.request["function_code"]) == key),
            None,
        )  # fmt: skip
        if waiting is None:
            counters[flow] += 1
            waiting = Transaction(counters[flow], flow)
            out.append(waiting)
        waiting.response = row
    return out


# -- Suricata's ``modbus:`` keyword (rust/src/modbus/detect.rs) -------------------------------------------------


def _range(low: str, high: str | None) -> tuple[int, int]:
    if high is not None:
        return int(low), int(high)
    if low.startswith(">"):
        return int(low[1:]), 0xFFFF
    if low.startswith("<"):
        return 0, int(low[1:])
    return int(low), int(low)


def _in(bounds: tuple[int, int], value: int) -> bool:
    low, high = bounds
    if low == high:
        return value == low
    if low == 0:
        return value < high
    if high == 0xFFFF:
        return value > low
    return low < value < high


def _overlaps(bounds: tuple[int, int], first: int, last: int) -> bool:
    low, high = bounds
    if low == high:
        return first <= low <= last
    if low == 0:
        return high > first
    if high == 0xFFFF:
        return low < last
    return low < last and first < high


def modbus_rule(value: str) -> Callable[[Transaction], bool] | None:
    """A predicate over our transactions for one ``modbus:`` option, or None if it uses ``value`` matching."""
    value = value.strip().strip('"').strip()
    unit = re.fullmatch(r"unit\s+([<>]?\d+)(?:<>(\d+))?(?:,\s*(.*))?", value)
    if unit:
        bounds = _range(unit.group(1), unit.group(2))
        rest = modbus_rule(unit.group(3)) if unit.group(3) else (lambda tx: True)
        if rest is None:
            return None
        inner = rest
        return lambda tx: tx.request is not None and _in(bounds, int(tx.request["unit_id"])) and inner(tx)  # type: ignore[call-overload]
    function = re.fullmatch(r"function\s*(!?\w+)(?:,\s*subfunction\s+(\d+))?", value)
    if function:
        word, sub = function.group(1), function.group(2)
        if word.isdigit():
            code = int(word)

            def by_code(tx: Transaction) -> bool:
                request = tx.request
                if request is None or FUNCTION_NAMES.get(
                    int(request["function_code"]), "Unknown"
                ) != FUNCTION_NAMES.get(code, "Unknown"):  # type: ignore[call-overload]
                    return False
                return sub is None or request["sub_function"] == int(sub)

            return by_code
        groups = {"assigned": {"PUBLIC_ASSIGNED"}, "unassigned": {"PUBLIC_UNASSIGNED"}, "user": {"USER_DEFINED"},
                  "reserved": {"RESERVED"}, "public": {"PUBLIC_ASSIGNED", "PUBLIC_UNASSIGNED"},
                  "all": {"PUBLIC_ASSIGNED", "PUBLIC_UNASSIGNED", "USER_DEFINED", "RESERVED"}}  # fmt: skip
        wanted = groups[word.lstrip("!")]
        negated = word.startswith("!")
        return lambda tx: tx.request is not None and ((category(tx.request) in wanted) != negated)
    access = re.fullmatch(
        r"access\s*(read|write)\s*(discretes|coils|input|holding)?(?:,\s*address\s+([<>]?\d+)(?:<>(\d+))?(.*))?", value
    )
    if access is None or (access.group(5) or "").strip():
        return None  # value matching needs the written values at an address: not interpreted
    kind = READ if access.group(1) == "read" else WRITE
    table = {"discretes": 0x04, "coils": COILS, "input": 0x10, "holding": HOLDING}
    bits = table.get(access.group(2) or "", 0)
    address = _range(access.group(3), access.group(4)) if access.group(3) else None

    def by_access(tx: Transaction) -> bool:
        request = tx.request
        if request is None:
            return False
        mine = access_type(int(request["function_code"]))  # type: ignore[call-overload]
        if not mine & kind or (bits and not mine & bits):
            return False
        if address is None:
            return True
        start, quantity = request["address"], request["quantity"]
        if start is None or not quantity:
            return False
        return _overlaps(address, int(start) + 1, int(start) + int(quantity))  # type: ignore[call-overload]

    return by_access


@pytest.fixture(scope="module")
def analyses(tmp_path_factory: pytest.TempPathFactory) -> Analyses:
    return Analyses(tmp_path_factory.mktemp("modbus-suricata"))


def views_of(case: Case, analyses: Analyses) -> tuple[list[Transaction], list[View]]:
    assert case.capture is not None
    tables = analyses.tables(case.capture, lambda: [ModbusDecoder()], ["modbus"])
    txs = transactions(tables["modbus"])
    return txs, [tx.view() for tx in txs]


#: Differences with a reason; none are needed on this case.
EXPLAINED: dict[tuple[str, str], str] = {}


def test_suricata_verify_expectations(analyses: Analyses) -> None:
    """Every eve ``modbus`` check: the number of our transactions matching all its fields equals ``count``, and
    per field the best-matching transaction agrees; every alert check whose rule uses only the ``modbus:``
    keyword fires on as many of our transactions as Suricata raised alerts (one per transaction)."""
    if not CASES:
        pytest.skip("research data missing: suricata-verify modbus cases")
    tally = Tally()
    for name in CASES:
        case = load(name)
        if case.capture is None:
            tally.skip(f"case {name}", "no capture")
            continue
        txs, views = views_of(case, analyses)
        for check in case.filters():
            match = flatten("", check.get("match") or {}, {})
            if match.get("event_type") != "modbus":
                continue
            wanted = {k: v for k, v in match.items() if k != "event_type"}
            matching = [v for v in views if all(v.get(k) == value for k, value in wanted.items())]
            tally.score(name, "modbus event count", len(matching) == check["count"],
                        f"{len(matching)} match, {check['count']} expected: {wanted}", EXPLAINED)  # fmt: skip
            best = max(views, key=lambda v: sum(v.get(k) == value for k, value in wanted.items()))
            for key, value in wanted.items():
                tally.score(name, key, best.get(key) == value, f"ours {best.get(key)!r}, suricata {value!r}", EXPLAINED)
        for check, rule in expected_alerts(case):
            sid = check["match"]["alert.signature_id"]  # type: ignore[index]
            if rule is None:
                tally.skip(f"alert {sid}", "the rule is not in test.rules")
                continue
            keywords = [(k, v) for k, v in rule.options if k not in ("msg", "sid", "rev", "classtype", "flow")]
            predicate = modbus_rule(keywords[0][1] or "") if len(keywords) == 1 and keywords[0][0] == "modbus" else None
            if predicate is None:
                tally.skip(f"alert {sid}", "rule uses keywords we do not evaluate")
                continue
            extra = {k: v for k, v in flatten("", check["match"], {}).items()
                     if k.startswith("modbus.")}  # fmt: skip
            fired = [tx for tx in txs if predicate(tx)]
            fired = [tx for tx in fired if all(tx.view().get(k) == v for k, v in extra.items())]
            tally.score(name, "alert count (modbus: keyword)", len(fired) == check["count"],
                        f"sid {sid} fires on {len(fired)}, suricata {check['count']}", EXPLAINED)  # fmt: skip
            for key in extra:
                tally.score(name, f"alert {key}", bool(fired), f"sid {sid}: no firing transaction has {key}", EXPLAINED)
        tally.lines.append(f"  [{name}] {len(txs)} transactions")
    tally.check("suricata-verify modbus")
    assert tally.compared["alert count (modbus: keyword)"] >= 7
