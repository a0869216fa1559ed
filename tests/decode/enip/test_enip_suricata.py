"""EtherNet/IP and CIP against suricata-verify's ``enip-*`` cases: eve ``enip`` records, ``flow`` app_proto and the
enip_command, cip_service and Suricata 8 ``enip.*`` keyword rules.

Run with ``-s`` to see the per-field agreement table.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import pytest

from quaywatch.decode.enip import EnipTcpDecoder, EnipUdpDecoder
from tests.decode.suricata_verify import (
    Analyses,
    Case,
    Record,
    Rule,
    Tally,
    View,
    case_names,
    content_matches,
    expected_alerts,
    flatten,
    load,
)

pytestmark = pytest.mark.oracle

CASES = case_names(["enip-"])
TABLES = ["enip", "cip", "cip_identity"]


def snake(name: object) -> str:
    """Suricata's command and status names (rust/src/enip/constant.rs): 'Send RR Data' -> 'send_rr_data'."""
    return str(name).lower().replace(" ", "_")


@dataclass
class Message:
    """One encapsulation message with the CIP services and identity it carries."""

    row: Record
    cip: list[Record] = field(default_factory=list)
    identity: Record | None = None

    @property
    def to_server(self) -> bool:
        return self.row["direction"] == "to_server"


@dataclass
class Transaction:
    request: Message | None = None
    response: Message | None = None

    def view(self) -> View:
        view: View = {}
        for prefix, message in (("enip.request", self.request), ("enip.response", self.response)):
            if message is None:
                continue
            row = message.row
            view[f"{prefix}.command"] = snake(row["command"])
            view[f"{prefix}.status"] = snake(row["status"])
            top = next((c for c in message.cip if not c["embedded"]), None)
            if top is not None:
                view[f"{prefix}.cip.service"] = top["service"]
                if top["class_name"] is not None:
                    view[f"{prefix}.cip.class_name"] = top["class_name"]
                # EPATH logical segments come class, instance, attribute (CIP Vol 1 C-1.4.2).
                path = [(kind, top[column]) for kind, column in
                        (("class", "class_id"), ("instance", "instance_id"), ("attribute", "attribute_id"))
                        if top[column] is not None]  # fmt: skip
                for index, (kind, value) in enumerate(path):
                    view[f"{prefix}.cip.path[{index}].segment_type"] = kind
                    view[f"{prefix}.cip.path[{index}].value"] = value
            identity = message.identity
            if identity is not None:
                ident = f"{prefix}.identity"
                view[f"{ident}.protocol_version"] = identity["encapsulation_version"]
                view[f"{ident}.vendor_id"] = identity["vendor_name"] or str(identity["vendor_id"])
                view[f"{ident}.device_type"] = identity["device_type_id"]
                view[f"{ident}.product_code"] = identity["product_code"]
                view[f"{ident}.revision"] = identity["revision"]
                view[f"{ident}.status"] = identity["device_status"]
                view[f"{ident}.serial"] = identity["serial_number"]
                view[f"{ident}.product_name"] = identity["product_name"]
                view[f"{ident}.state"] = identity["device_state"]
        return view


def messages(tables: dict[str, list[Record]]) -> list[tuple[Message, Transaction]]:
    """Our encapsulation messages and the Suricata 8 transaction each belongs to.

    Suricata's rust ENIP parser (rust/src/enip/enip.rs) makes one transaction of a request and the response
    that follows it on the connection; a datagram on UDP is a transaction of its own.
    """
    by_packet: dict[tuple[object, object], list[Message]] = defaultdict(list)
    ordered: list[Message] = []
    for row in tables["enip"]:
        message = Message(row)
        by_packet[(row["flow_id"], row["packet_number"])].append(message)
        ordered.append(message)
    for name, attach in (("cip", "cip"), ("cip_identity", "identity")):
        for row in tables[name]:
            owners = by_packet[(row["flow_id"], row["packet_number"])]
            assert len(owners) == 1, f"{len(owners)} encapsulation messages in packet {row['packet_number']}"
            if attach == "cip":
                owners[0].cip.append(row)
            else:
                owners[0].identity = row
    out: list[tuple[Message, Transaction]] = []
    open_: dict[object, list[Transaction]] = defaultdict(list)
    for message in ordered:
        flow = message.row["flow_id"]
        if message.row["transport"] == "udp":
            tx = Transaction(request=message) if message.to_server else Transaction(response=message)
        elif message.to_server:
            tx = Transaction(request=message)
            open_[flow].append(tx)
        else:
            tx = open_[flow].pop(0) if open_[flow] else Transaction()
            tx.response = message
        out.append((message, tx))
    return out


def _number(value: str) -> int | None:
    value = value.strip()
    try:
        return int(value, 0)
    except ValueError:
        return None


#: Suricata 8 identity keywords (rust/src/enip/detect.rs) and our cip_identity column.
IDENTITY_KEYWORDS = {
    "enip.protocol_version": "encapsulation_version", "enip.identity_status": "device_status",
    "enip.state": "device_state", "enip.serial": "serial_number", "enip.product_code": "product_code",
    "enip.device_type": "device_type_id", "enip.vendor_id": "vendor_id",
}  # fmt: skip
NOT_EVALUATED = "only frame:, content on buffers we do not keep, or keywords we do not model"


def fires(rule: Rule, message: Message) -> bool | None:
    """Whether ``rule`` alerts on ``message`` (Suricata 8 inspects each direction of a transaction), or None
    when the rule uses something we do not evaluate."""
    options = [(k, v) for k, v in rule.options if k not in ("msg", "sid", "rev", "classtype")]
    if any(k in ("frame", "bsize") for k, _ in options):
        return None
    ok = True
    services = message.cip
    for index, (keyword, value) in enumerate(options):
        if keyword == "flow":
            if value is not None and "to_server" in value and not message.to_server:
                ok = False
            if value is not None and "to_client" in value and message.to_server:
                ok = False
        elif keyword == "enip_command":
            number = _number(value or "")
            ok &= (message.row["command_code"] == number) if number is not None else (
                snake(message.row["command"]) == (value or "").strip())  # fmt: skip
        elif keyword == "cip_service":
            ok &= any(c["service_code"] == _number(value or "") for c in services)
        elif keyword == "enip.status":
            ok &= message.row["status_code"] == _number(value or "")
        elif keyword == "enip.cip_status":
            ok &= any(c["message"] == "response" and c["status_code"] == _number(value or "") for c in services)
        elif keyword == "enip.revision":
            identity = message.identity
            major, _, minor = str(identity["revision"]).partition(".") if identity else ("", "", "")
            ok &= identity is not None and (int(major) << 8 | int(minor)) == _number(value or "")
        elif keyword in IDENTITY_KEYWORDS:
            ok &= message.identity is not None and message.identity[IDENTITY_KEYWORDS[keyword]] == _number(value or "")
        elif keyword == "enip.product_name":
            name = message.identity["product_name"] if message.identity else None
            ok &= content_matches(None if name is None else str(name).encode(), options[index + 1 :])
        elif keyword in ("enip.cip_attribute", "enip.cip_class", "enip.cip_instance"):
            continue  # evaluated together below, on one request service
        elif keyword in ("content", "startswith", "endswith", "nocase", "fast_pattern"):
            continue  # belongs to the sticky buffer before it
        else:
            return None
    path = {
        k: _number(v or "") for k, v in options if k in ("enip.cip_attribute", "enip.cip_class", "enip.cip_instance")
    }
    if path:
        ok &= any(
            c["message"] == "request"
            and ("enip.cip_class" not in path or c["class_id"] == path["enip.cip_class"])
            and ("enip.cip_instance" not in path or c["instance_id"] == path["enip.cip_instance"])
            and ("enip.cip_attribute" not in path or c["attribute_id"] == path["enip.cip_attribute"]
                 or path["enip.cip_attribute"] in (c["attribute_list"] or []))  # type: ignore[operator]
            for c in services
        )  # fmt: skip
    return ok


@pytest.fixture(scope="module")
def analyses(tmp_path_factory: pytest.TempPathFactory) -> Analyses:
    return Analyses(tmp_path_factory.mktemp("enip-suricata"))


def tables_of(case: Case, analyses: Analyses) -> dict[str, list[Record]]:
    assert case.capture is not None
    return analyses.tables(case.capture, lambda: [EnipTcpDecoder(), EnipUdpDecoder()], TABLES)


#: Differences with a reason; none are needed on these cases.
EXPLAINED: dict[tuple[str, str], str] = {}


def test_suricata_verify_expectations(analyses: Analyses) -> None:
    """Every eve ``enip`` check (count and per field on the best-matching transaction) and every alert check
    whose rule uses only keywords we evaluate (count of alerting messages, and the eve fields the alert
    carries)."""
    if not CASES:
        pytest.skip("research data missing: suricata-verify enip cases")
    tally = Tally()
    tally.skip("stats.*", "Suricata's own counters (enip-stats-udp), not protocol fields")
    for name in CASES:
        case = load(name)
        if case.capture is None:
            tally.skip(f"case {name}", "no capture")
            continue
        pairs = messages(tables_of(case, analyses))
        transactions: list[Transaction] = []
        for _, tx in pairs:
            if not any(tx is other for other in transactions):
                transactions.append(tx)
        views = [tx.view() for tx in transactions]
        for check in case.filters():
            match = flatten("", check.get("match") or {}, {})
            if match.get("event_type") != "enip":
                continue
            wanted = {k: v for k, v in match.items() if k != "event_type"}
            matching = [v for v in views if all(v.get(k) == value for k, value in wanted.items())]
            tally.score(name, "enip event count", len(matching) == check["count"],
                        f"{len(matching)} match, {check['count']} expected: {wanted}", EXPLAINED)  # fmt: skip
            best = max(views, key=lambda v: sum(v.get(k) == value for k, value in wanted.items()))
            for key, value in wanted.items():
                tally.score(name, key, best.get(key) == value, f"ours {best.get(key)!r}, suricata {value!r}", EXPLAINED)
        for check, rule in expected_alerts(case):
            sid = check["match"]["alert.signature_id"]  # type: ignore[index]
            if rule is None:
                tally.skip(f"alert {sid}", "the rule is not in test.rules")
                continue
            verdicts = [(message, tx, fires(rule, message)) for message, tx in pairs]
            if not pairs or any(verdict is None for _, _, verdict in verdicts):
                used = " ".join(k for k, _ in rule.options if k not in ("msg", "sid", "rev"))
                tally.skip(f"alert [{name}] sid {sid} ({used})", NOT_EVALUATED)
                continue
            fired = [(message, tx) for message, tx, verdict in verdicts if verdict]
            tally.score(name, "alert count", len(fired) == check["count"],
                        f"sid {sid} fires on {len(fired)} messages, suricata {check['count']}", EXPLAINED)  # fmt: skip
            for key, value in flatten("", check["match"], {}).items():
                if key.startswith("enip."):
                    ok = bool(fired) and all(tx.view().get(key) == value for _, tx in fired)
                    tally.score(name, f"alert {key}", ok, f"sid {sid}: {key} of the alerting transactions", EXPLAINED)
        tally.lines.append(f"  [{name}] {len(pairs)} encapsulation messages, {len(transactions)} transactions")
    tally.check("suricata-verify enip")
    assert tally.compared["alert count"] >= 17 and tally.compared["enip event count"] == 2


def test_suricata_flows_identified_as_enip(analyses: Analyses) -> None:
    """``flow`` checks with ``app_proto: enip``: the flows our EtherNet/IP decoders claim (Suricata names TCP and
    UDP EtherNet/IP alike ``enip``; ours are ``enip`` and ``enip_udp``)."""
    compared = 0
    for name in CASES:
        case = load(name)
        checks = [c for c in case.filters() if (c.get("match") or {}).get("event_type") == "flow"
                  and c["match"].get("app_proto") == "enip"]  # fmt: skip
        if not checks or case.capture is None:
            continue
        flows = [f for f in tables_of(case, analyses)["flows"] if f["application"] in ("enip", "enip_udp")]
        for check in checks:
            print(f"\n{name}: {len(flows)} EtherNet/IP flows, suricata {check['count']}")
            assert len(flows) == check["count"]
            compared += 1
    if not compared:
        pytest.skip("research data missing: no enip flow expectations")
