"""The passive asset inventory: one asset per local MAC address, with every identity observation as evidence.

Built in DuckDB over the stored tables (``flows``, ``arp``, ``dhcp``, the layer-2 and the identity-bearing decoder
tables, whichever exist). Python runs once per asset only, for the OUI registry, the provenance knowledge base and the
role rules (``data/asset_roles.yaml``). Both output tables are replaced on every build, so a rebuild never duplicates.

The router rule: a MAC that carries more than :data:`ROUTER_IP_THRESHOLD` addresses, or any address outside the
site's local networks, is the MAC of a router for those addresses. They are recorded as ``routes_for`` on the router's
asset and never as its own addresses, and nothing decoded from their traffic is attributed to it. Addresses the MAC
claims itself (ARP sender, DHCP chaddr) stay its own whatever their number or range.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import pyarrow as pa

from quaywatch.assets import oui
from quaywatch.assets.provenance import KnowledgeBase, load_knowledge_base
from quaywatch.store.database import Store
from quaywatch.yaml_files import load_yaml

ASSETS_TABLE = "assets"
ATTRIBUTES_TABLE = "asset_attributes"

#: More distinct addresses than this behind one MAC makes it a router for them.
ROUTER_IP_THRESHOLD = 8

#: The site's local networks: addresses outside them are remote, so their MAC is a router's.
DEFAULT_LOCAL_NETWORKS = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
    "fe80::/10",
)

#: Evidence references kept per attribute value (the observation count keeps the total).
EVIDENCE_LIMIT = 5
ROUTES_FOR_LIMIT = 50
#: Addresses routed for before the ``routes_for`` role fact holds: one remote peer alone is as likely a host with a
#: public address as a router.
ROUTES_FOR_ROLE_MINIMUM = 2

#: A client flow with at least this many requests over at least this many seconds is a cyclic poll (HMI, SCADA).
POLL_MINIMUM_REQUESTS = 30
POLL_MINIMUM_SECONDS = 30.0

#: Role facts by how an asset took part in a flow or in an ICS request (``_protocols.how``).
_FACT_PREFIX = {"served": "serves", "used": "uses", "polled": "polls", "identified": "identifies", "wrote": "writes"}

#: ICS requests a client sent, by (table, fact, condition over alias e): identification reads and state changes tell
#: an engineering workstation from an HMI, which only reads cyclically.
ICS_CLIENT_FACTS: tuple[tuple[str, str, str, str], ...] = (
    ("s7comm", "identified", "s7comm", "e.szl_id IS NOT NULL"),
    ("s7comm", "wrote", "s7comm", "e.controls_plc"),
    ("enip", "identified", "enip", "e.command = 'List Identity'"),
    ("cip", "identified", "enip", "e.service = 'Get Attributes All' AND e.class_name = 'Identity'"),
    ("cip", "wrote", "enip", "e.controls_device"),
    ("modbus", "identified", "modbus", "e.function_code = 43"),
    ("modbus", "wrote", "modbus", "e.writes"),
)

#: Attributes that legitimately hold several values at once: never counted as conflicts.
MULTI_VALUED = frozenset({"capability", "listed", "maker_role", "role", "description", "software", "client_software"})

#: Attributes whose best value becomes an ``assets`` column of the same name.
BEST_COLUMNS = ("model", "firmware", "serial", "hostname")


def _doc(name: str, kind: pa.DataType, doc: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, kind, nullable, {"doc": doc})


ASSETS_SCHEMA = pa.schema(
    [
        _doc("asset_id", pa.string(), "stable id: first 16 hex digits of sha256 of the MAC (or 'ip:' + IP)", False),
        _doc("mac", pa.string(), "MAC address; NULL for a host seen only on a link without MACs"),
        _doc("vendor", pa.string(), "IEEE OUI registry organisation of the MAC"),
        _doc("oui_block", pa.string(), "registry block: MA-L, MA-M or MA-S"),
        _doc("oui_country", pa.string(), "country of the registry entry"),
        _doc("device_vendor", pa.string(), "highest-confidence vendor decoded from the device (CIP, Modbus, S7 ...)"),
        _doc("ips", pa.list_(pa.string()), "its own addresses (router rule applied)"),
        _doc("routes_for", pa.list_(pa.string()), "remote or many addresses its MAC carries (first 50)"),
        _doc("routed_ips", pa.int64(), "how many addresses it routes for"),
        _doc("vlans", pa.list_(pa.int32()), "VLAN ids it was seen on"),
        _doc("first_seen", pa.timestamp("us", tz="UTC"), "first packet, flow or announcement"),
        _doc("last_seen", pa.timestamp("us", tz="UTC"), "last one"),
        _doc("role", pa.string(), "PLC, drive, HMI, engineering workstation, camera, NVR, ... or unknown"),
        _doc("role_confidence", pa.float64(), "confidence of that role, 0-1"),
        _doc("model", pa.string(), "highest-confidence model / product"),
        _doc("firmware", pa.string(), "highest-confidence firmware or software revision"),
        _doc("serial", pa.string(), "highest-confidence serial number"),
        _doc("hostname", pa.string(), "highest-confidence host or station name"),
        _doc("protocols_served", pa.list_(pa.string()), "decoders of flows where it is the server"),
        _doc("protocols_used", pa.list_(pa.string()), "decoders of flows where it is the client"),
        _doc("maker", pa.string(), "provenance organisation of the highest-confidence resolved vendor"),
        _doc("maker_country", pa.string(), "its country (from its parent chain)"),
        _doc(
            "maker_roles", pa.list_(pa.string()), "knowledge-base roles of every resolved maker (cellular_module ...)"
        ),
        _doc("listed", pa.list_(pa.string()), "restricted lists naming any maker resolved for it"),
        _doc("conflicts", pa.list_(pa.string()), "attributes with disagreeing values (see asset_attributes)"),
        _doc("evidence_count", pa.int64(), "attribute observations behind the asset"),
    ]
)

ATTRIBUTES_SCHEMA = pa.schema(
    [
        _doc("asset_id", pa.string(), "assets.asset_id", False),
        _doc("attribute", pa.string(), "vendor, model, firmware, serial, hostname, role, maker, listed ...", False),
        _doc("value", pa.string(), "the value as observed (packet strings unescaped: escape before printing)", False),
        _doc("source_table", pa.string(), "store table, or oui / provenance / asset_roles.yaml", False),
        _doc("rule", pa.string(), "extraction or inference rule that produced it", False),
        _doc("evidence", pa.list_(pa.string()), "a few references: capture_id[:12]:packet, flow ids, or facts"),
        _doc("observations", pa.int64(), "how many times it was observed"),
        _doc("confidence", pa.float64(), "0-1", False),
        _doc("conflicts", pa.int64(), "other distinct values of this attribute for this asset (0: agreement)"),
        _doc("first_seen", pa.timestamp("us", tz="UTC"), "first observation"),
    ]
)


@dataclass(frozen=True, slots=True)
class Source:
    """One attribute extraction: which table, which side of the flow, which column and how much to trust it."""

    table: str
    side: str  # server, client or mac:<column> (layer-2 tables, DHCP chaddr)
    attribute: str
    value: str  # SQL expression over alias e
    rule: str
    confidence: float
    where: str = "TRUE"


#: Every identity source the inventory reads; tables that do not exist are skipped.
SOURCES: tuple[Source, ...] = (
    # Modbus 43/14 read device identification: the server's answer.
    Source("modbus", "server", "vendor", "e.vendor_name", "modbus_43_14_vendor_name", 0.9, "e.direction = 'to_client'"),
    Source(
        "modbus", "server", "model", "e.product_code", "modbus_43_14_product_code", 0.85, "e.direction = 'to_client'"
    ),
    Source("modbus", "server", "model", "e.model_name", "modbus_43_14_model_name", 0.8, "e.direction = 'to_client'"),
    Source("modbus", "server", "firmware", "e.revision", "modbus_43_14_revision", 0.85, "e.direction = 'to_client'"),
    # CIP identity (List Identity reply, Get Attributes All of the identity object).
    Source("cip_identity", "server", "vendor", "e.vendor_name", "cip_identity_vendor", 0.95),
    Source("cip_identity", "server", "model", "e.product_name", "cip_identity_product_name", 0.95),
    Source("cip_identity", "server", "firmware", "e.revision", "cip_identity_revision", 0.9),
    Source("cip_identity", "server", "serial", "printf('0x%08x', e.serial_number)", "cip_identity_serial", 0.95),
    Source("cip_identity", "server", "device_type", "e.device_type_name", "cip_identity_device_type", 0.9),
    Source("cip_identity", "server", "product_code", "e.product_code", "cip_identity_product_code", 0.9),
    # S7 SZL 0x0011 module identification and 0x001C component identification.
    Source(
        "s7comm", "server", "model", "e.order_number", "s7_szl_0011_order_number", 0.95, "e.direction = 'to_client'"
    ),
    Source(
        "s7comm", "server", "firmware", "e.firmware_version", "s7_szl_0011_firmware", 0.95, "e.direction = 'to_client'"
    ),
    Source("s7comm", "server", "serial", "e.module_serial", "s7_szl_001c_serial", 0.95, "e.direction = 'to_client'"),
    Source(
        "s7comm",
        "server",
        "hostname",
        "e.automation_system_name",
        "s7_szl_001c_system_name",
        0.7,
        "e.direction = 'to_client'",
    ),
    Source(
        "s7comm", "server", "module_name", "e.module_name", "s7_szl_001c_module_name", 0.8, "e.direction = 'to_client'"
    ),
    Source(
        "s7comm", "server", "description", "e.module_type_name", "s7_szl_001c_type", 0.8, "e.direction = 'to_client'"
    ),
    Source(
        "s7comm",
        "server",
        "vendor",
        "'Siemens'",
        "s7_szl_identification_implies_siemens",
        0.6,
        "e.direction = 'to_client' AND e.order_number IS NOT NULL",
    ),
    # LLDP and CDP announcements, by Ethernet source.
    Source("lldp", "mac:source_mac", "hostname", "e.system_name", "lldp_system_name", 0.8),
    Source("lldp", "mac:source_mac", "description", "e.system_description", "lldp_system_description", 0.7),
    Source("lldp", "mac:source_mac", "capability", "lower(c)", "lldp_enabled_capability", 0.8),
    Source("cdp", "mac:source_mac", "hostname", "coalesce(e.system_name, e.device_id)", "cdp_device_id", 0.8),
    Source("cdp", "mac:source_mac", "model", "e.platform", "cdp_platform", 0.8),
    Source("cdp", "mac:source_mac", "description", "e.software_version", "cdp_software_version", 0.7),
    Source("cdp", "mac:source_mac", "capability", "lower(c)", "cdp_capability", 0.8),
    # SNMP: the agent answers (server) or sends traps (client).
    Source("snmp", "server", "description", "e.sys_descr", "snmp_sysdescr", 0.8, "e.pdu_type = 'response'"),
    Source("snmp", "server", "hostname", "e.sys_name", "snmp_sysname", 0.75, "e.pdu_type = 'response'"),
    Source("snmp", "server", "sys_object_id", "e.sys_object_id", "snmp_sysobjectid", 0.8, "e.pdu_type = 'response'"),
    Source("snmp", "client", "description", "e.sys_descr", "snmp_trap_sysdescr", 0.7, "e.pdu_type <> 'response'"),
    # Banners and certificates.
    Source("http", "server", "software", "e.server", "http_server_header", 0.6),
    Source("http", "client", "client_software", "e.user_agent", "http_user_agent", 0.4),
    Source("rtsp", "server", "software", "e.server", "rtsp_server_header", 0.6),
    Source("ssh", "server", "software", "e.software_version", "ssh_server_banner", 0.6, "e.direction = 'to_client'"),
    Source(
        "ssh", "client", "client_software", "e.software_version", "ssh_client_banner", 0.5, "e.direction = 'to_server'"
    ),
    Source(
        "tls_certificate",
        "server",
        "certificate_cn",
        "nullif(regexp_extract(e.subject, '(?:^|,)CN=((?:[^,\\\\]|\\\\.)*)', 1), '')",
        "tls_leaf_subject_cn",
        0.5,
        "e.position = 0",
    ),
    # DHCP: the client is chaddr, whatever address it has yet.
    Source("dhcp", "mac:client_mac", "hostname", "e.hostname", "dhcp_option_12_host_name", 0.8, "e.op = 1"),
    Source("dhcp", "mac:client_mac", "dhcp_vendor_class", "e.vendor_class_id", "dhcp_option_60_vendor_class", 0.7),
    # MQTT CONNECT client identifier.
    Source(
        "mqtt", "client", "mqtt_client_id", "e.client_id", "mqtt_connect_client_id", 0.5, "e.packet_type = 'CONNECT'"
    ),
    # Profinet DCP identify responses and Hello, by Ethernet source.
    Source(
        "profinet_dcp",
        "mac:source_mac",
        "hostname",
        "e.station_name",
        "dcp_name_of_station",
        0.85,
        "e.service_type <> 0",
    ),
    Source(
        "profinet_dcp",
        "mac:source_mac",
        "model",
        "e.type_of_station",
        "dcp_type_of_station",
        0.8,
        "e.service_type <> 0",
    ),
    Source(
        "profinet_dcp",
        "mac:source_mac",
        "profinet_device",
        "printf('vendor 0x%04x device 0x%04x', e.vendor_id, e.device_id)",
        "dcp_device_id",
        0.85,
        "e.service_type <> 0 AND e.vendor_id IS NOT NULL",
    ),
    Source(
        "profinet_dcp",
        "mac:source_mac",
        "vendor",
        "'Siemens'",
        "dcp_vendor_id_0x002a",
        0.8,
        "e.service_type <> 0 AND e.vendor_id = 42",
    ),
    # BACnet I-Am: the device announces itself (the datagram's sender is the flow client).
    Source("bacnet_discovery", "client", "vendor", "e.vendor", "bacnet_i_am_vendor", 0.8, "e.service = 'i_am'"),
)

#: List columns unnested into one row per element (alias c).
_UNNEST = {("lldp", "capability"): "e.enabled_capabilities", ("cdp", "capability"): "e.capabilities"}


@dataclass(frozen=True, slots=True)
class RoleRule:
    """One rule of ``data/asset_roles.yaml``."""

    id: str
    role: str
    confidence: float
    reason: str
    any_fact: tuple[str, ...] = ()
    all_facts: tuple[str, ...] = ()
    no_fact: tuple[str, ...] = ()
    attribute: str | None = None
    pattern: re.Pattern[str] | None = None


@dataclass
class InventorySummary:
    """What a build produced, for the CLI and tests."""

    assets: int = 0
    attributes: int = 0
    roles: dict[str, int] = field(default_factory=dict)
    listed: int = 0
    conflicts: int = 0
    sources: list[str] = field(default_factory=list)


@lru_cache(maxsize=1)
def role_rules() -> tuple[RoleRule, ...]:
    """The shipped role rules, validated."""
    text = resources.files("quaywatch.data").joinpath("asset_roles.yaml").read_text(encoding="utf-8")
    return parse_role_rules(load_yaml(text))


def parse_role_rules(document: Any) -> tuple[RoleRule, ...]:
    """Rules from the YAML document; a malformed rule fails loudly with its id."""
    rules = []
    for index, raw in enumerate(document.get("rules", [])):
        where = f"asset_roles.yaml rule {raw.get('id', index)!r}"
        unknown = set(raw) - {"id", "role", "confidence", "reason", "any_fact", "all_facts", "no_fact", "attribute"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        confidence = float(raw["confidence"])
        if not 0 <= confidence <= 1:
            raise ValueError(f"{where}: confidence must be between 0 and 1")
        attribute = raw.get("attribute")
        rules.append(
            RoleRule(
                id=str(raw["id"]),
                role=str(raw["role"]),
                confidence=confidence,
                reason=str(raw["reason"]),
                any_fact=tuple(raw.get("any_fact", ())),
                all_facts=tuple(raw.get("all_facts", ())),
                no_fact=tuple(raw.get("no_fact", ())),
                attribute=None if attribute is None else str(attribute["name"]),
                pattern=None if attribute is None else re.compile(str(attribute["pattern"]), re.IGNORECASE),
            )
        )
    return tuple(rules)


def evaluate_roles(
    facts: set[str], values: dict[str, list[str]], rules: Sequence[RoleRule]
) -> list[tuple[RoleRule, list[str]]]:
    """Rules that hold for one asset, each with the facts and values that made it hold."""
    fired = []
    for rule in rules:
        evidence: list[str] = []
        if rule.any_fact:
            hits = [fact for fact in rule.any_fact if fact in facts]
            if not hits:
                continue
            evidence += hits
        if rule.all_facts:
            if not all(fact in facts for fact in rule.all_facts):
                continue
            evidence += [fact for fact in rule.all_facts if fact not in evidence]
        if any(fact in facts for fact in rule.no_fact):
            continue
        if rule.pattern is not None and rule.attribute is not None:
            names = re.compile(f"^(?:{rule.attribute})$")
            matched = [f"{name}={value}" for name, vals in values.items() if names.match(name) for value in vals]
            matched = [item for item in matched if rule.pattern.search(item.split("=", 1)[1])]
            if not matched:
                continue
            evidence += matched[:3]
        fired.append((rule, evidence))
    return fired


def _existing_columns(store: Store) -> dict[str, set[str]]:
    rows = store.connection.execute(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'main'"
    ).fetchall()
    columns: dict[str, set[str]] = {}
    for table, column in rows:
        columns.setdefault(table, set()).add(column)
    return columns


_VALID_MAC = (
    "{m} IS NOT NULL AND {m} <> '00:00:00:00:00:00' AND length({m}) = 17 "
    "AND substr(lower({m}), 2, 1) NOT IN ('1', '3', '5', '7', '9', 'b', 'd', 'f')"
)


def _valid_mac(column: str) -> str:
    return _VALID_MAC.format(m=column)


def _observation_sql(columns: dict[str, set[str]]) -> str:
    """(mac, ip, vlan, ts, last_ts, claimed) for every place a MAC is seen as a source; claimed: it said the IP."""
    parts = []
    if "flows" in columns:
        parts.append(
            "SELECT client_mac AS mac, client_ip AS ip, vlan, ts, last_ts, FALSE AS claimed FROM flows "
            "UNION ALL SELECT server_mac, server_ip, vlan, ts, last_ts, FALSE FROM flows WHERE packets_to_client > 0"
        )
    if "arp" in columns:
        parts.append(
            "SELECT sender_mac, CASE WHEN sender_ip <> '0.0.0.0' THEN sender_ip END, vlan, ts, ts, TRUE FROM arp"
        )
    if "dhcp" in columns:
        parts.append(
            "SELECT client_mac, CASE WHEN ciaddr IS NOT NULL AND ciaddr <> '0.0.0.0' THEN ciaddr "
            "WHEN message_type_name = 'ACK' AND yiaddr <> '0.0.0.0' THEN yiaddr END, NULL, ts, ts, TRUE FROM dhcp "
            "WHERE htype = 1"
        )
    for table in ("lldp", "cdp", "profinet_dcp"):
        if table in columns:
            ip = "NULL"
            if table == "profinet_dcp":
                ip = "CASE WHEN service_type <> 0 AND ip IS NOT NULL AND ip <> '0.0.0.0' THEN ip END"
            parts.append(f"SELECT source_mac, {ip}, vlan, ts, ts, TRUE FROM {table}")
    if not parts:
        return (
            "SELECT NULL::VARCHAR AS mac, NULL::VARCHAR AS ip, NULL::INTEGER AS vlan, NULL::TIMESTAMPTZ AS ts, "
            "NULL::TIMESTAMPTZ AS last_ts, FALSE AS claimed WHERE FALSE"
        )
    return " UNION ALL ".join(f"({part})" for part in parts)


def _source_sql(source: Source, columns: dict[str, set[str]]) -> str | None:
    """One extraction as rows (mac, ip, by_mac, attribute, value, source_table, rule, confidence, ts, ref)."""
    table_columns = columns.get(source.table)
    if table_columns is None:
        return None
    referenced = set(re.findall(r"\be\.(\w+)", source.value + " " + source.where))
    unnest = _UNNEST.get((source.table, source.attribute))
    if unnest is not None:
        referenced.add(unnest.removeprefix("e."))
    if not referenced <= table_columns:
        return None
    ref = (
        "CASE WHEN e.packet_number IS NOT NULL THEN substr(e.capture_id, 1, 12) || ':' || e.packet_number::VARCHAR "
        "ELSE e.flow_id END"
    )
    value = f"trim(CAST({source.value} AS VARCHAR))"
    body = f'FROM "{source.table}" e'
    if unnest is not None:
        body += f", unnest(coalesce({unnest}, []::VARCHAR[])) AS u(c)"
    if source.side.startswith("mac:"):
        mac, ip, by_mac = f"lower(e.{source.side.removeprefix('mac:')})", "NULL::VARCHAR", "TRUE"
    else:
        side = source.side
        if "flows" in columns:
            body += " LEFT JOIN flows f ON f.capture_id = e.capture_id AND f.flow_id = e.flow_id"
            mac = f"f.{side}_mac"
        else:
            mac = "NULL::VARCHAR"
        ip, by_mac = f"e.{side}_ip", "FALSE"
    return (
        f"SELECT {mac} AS mac, {ip} AS ip, {by_mac} AS by_mac, '{source.attribute}' AS attribute, {value} AS value, "
        f"'{source.table}' AS source_table, '{source.rule}' AS rule, {source.confidence}::DOUBLE AS confidence, "
        f"e.ts AS ts, {ref} AS ref {body} WHERE ({source.where}) AND {value} IS NOT NULL AND {value} <> ''"
    )


def _insert_ics_client_facts(con: Any, columns: dict[str, set[str]]) -> None:
    """Add identification and write requests each client sent, by the client's (MAC, address) as flows are."""
    for table, how, decoder, condition in ICS_CLIENT_FACTS:
        needed = set(re.findall(r"\be\.(\w+)", condition)) | {"client_ip", "direction", "flow_id", "capture_id"}
        if not needed <= columns.get(table, set()):
            continue
        con.execute(f"""
            INSERT INTO _protocols
            SELECT DISTINCT o.asset_id, '{how}', '{decoder}' FROM "{table}" e
            JOIN flows f ON f.capture_id = e.capture_id AND f.flow_id = e.flow_id
            JOIN _reach o ON o.ip = e.client_ip AND o.mac IS NOT DISTINCT FROM lower(f.client_mac)
            WHERE e.direction = 'to_server' AND ({condition})
            EXCEPT SELECT asset_id, how, application FROM _protocols
        """)


def _local(ip: str, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if address.is_multicast or address.is_unspecified or str(address) == "255.255.255.255":
        return False
    return any(address.version == net.version and address in net for net in networks)


def build_inventory(
    store: Store,
    local_networks: Iterable[str] = DEFAULT_LOCAL_NETWORKS,
    knowledge_base: KnowledgeBase | None = None,
    rules: Sequence[RoleRule] | None = None,
) -> InventorySummary:
    """Rebuild ``assets`` and ``asset_attributes`` from what the store holds."""
    store.flush()
    con = store.connection
    columns = _existing_columns(store)
    networks = [ipaddress.ip_network(net, strict=False) for net in local_networks]
    kb = knowledge_base or load_knowledge_base()
    rules = role_rules() if rules is None else tuple(rules)
    summary = InventorySummary()

    con.execute(f"CREATE OR REPLACE TEMP TABLE _obs AS SELECT lower(mac) AS mac, ip, vlan, ts, last_ts, claimed "
                f"FROM ({_observation_sql(columns)}) o")  # fmt: skip
    # Each distinct address classified once (per address, not per packet).
    ips = [row[0] for row in con.execute("SELECT DISTINCT ip FROM _obs WHERE ip IS NOT NULL").fetchall()]
    ipclass = pa.table({"ip": pa.array(ips, pa.string()), "local": pa.array([_local(ip, networks) for ip in ips])})
    con.register("_ipclass_arrow", ipclass)
    con.execute("CREATE OR REPLACE TEMP TABLE _ipclass AS SELECT * FROM _ipclass_arrow")
    con.unregister("_ipclass_arrow")
    valid = _valid_mac("mac")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _pairs AS
        WITH p AS (
            SELECT o.mac, o.ip, bool_or(o.claimed) AS claimed, any_value(c.local) AS local
            FROM _obs o JOIN _ipclass c USING (ip)
            WHERE (o.mac IS NULL OR ({valid}))
            GROUP BY o.mac, o.ip
        )
        SELECT p.*, count(*) OVER (PARTITION BY p.mac) AS ips_behind_mac,
            CASE WHEN p.mac IS NULL THEN p.local
                 ELSE p.claimed OR (p.local AND count(*) OVER (PARTITION BY p.mac) <= {ROUTER_IP_THRESHOLD}
                     -- another MAC claimed this address itself (ARP, DHCP): this one only forwards it
                     AND NOT bool_or(p.claimed) OVER (PARTITION BY p.ip)) END
                AS own
        FROM p
    """)
    # Assets: every valid source MAC, plus local addresses seen only without any MAC (e.g. cooked or raw IP links).
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _assets AS
        SELECT substr(sha256(key), 1, 16) AS asset_id, mac, ip_only FROM (
            SELECT DISTINCT mac, mac AS key, NULL::VARCHAR AS ip_only FROM _obs WHERE {valid}
            UNION ALL
            SELECT DISTINCT NULL, 'ip:' || ip, ip FROM _pairs p
            WHERE p.mac IS NULL AND p.own AND NOT EXISTS (SELECT 1 FROM _pairs q WHERE q.ip = p.ip AND q.own
                AND q.mac IS NOT NULL)
        )
    """)
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _own AS
        SELECT a.asset_id, p.mac, p.ip FROM _pairs p JOIN _assets a ON a.mac = p.mac WHERE p.own
        UNION ALL SELECT asset_id, NULL, ip_only FROM _assets WHERE ip_only IS NOT NULL
    """)
    # Where the sensor sees a flow only on the far side of a router, the flow carries the router's MAC: an address
    # owned by exactly one asset is still that asset's, so (router MAC, that address) reaches it too. Only MACs that
    # route for others qualify, so a host spoofing one address gains nothing for its victim.
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _reach AS
        SELECT asset_id, mac, ip FROM _own
        UNION
        SELECT u.asset_id, r.mac, u.ip
        FROM (SELECT ip, any_value(asset_id) AS asset_id FROM _own GROUP BY ip HAVING count(DISTINCT asset_id) = 1) u
        CROSS JOIN (SELECT mac FROM _pairs WHERE NOT own AND mac IS NOT NULL GROUP BY mac
                    HAVING count(*) >= {ROUTES_FOR_ROLE_MINIMUM}) r
        WHERE NOT EXISTS (SELECT 1 FROM _own o WHERE o.ip = u.ip AND o.mac = r.mac)
    """)

    # When and where each asset was seen: equality joins only, by MAC or, for MAC-less hosts, by address.
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _seen AS
        SELECT asset_id, min(ts) AS first_seen, max(coalesce(last_ts, ts)) AS last_seen,
            list(DISTINCT vlan ORDER BY vlan) FILTER (WHERE vlan IS NOT NULL) AS vlans
        FROM (
            SELECT a.asset_id, o.ts, o.last_ts, o.vlan FROM _assets a JOIN _obs o ON o.mac = a.mac
            UNION ALL
            SELECT a.asset_id, o.ts, o.last_ts, o.vlan FROM _assets a JOIN _obs o ON o.mac IS NULL AND o.ip = a.ip_only
        ) GROUP BY asset_id
    """)

    # Attribute observations from the decoder tables, each resolved to an asset by MAC or by (MAC, own IP).
    selects = []
    for source in SOURCES:
        sql = _source_sql(source, columns)
        if sql is not None:
            selects.append(sql)
            if source.table not in summary.sources:
                summary.sources.append(source.table)
    raw = " UNION ALL ".join(f"({s})" for s in selects) if selects else (
        "SELECT NULL::VARCHAR AS mac, NULL::VARCHAR AS ip, FALSE AS by_mac, NULL::VARCHAR AS attribute, "
        "NULL::VARCHAR AS value, NULL::VARCHAR AS source_table, NULL::VARCHAR AS rule, NULL::DOUBLE AS confidence, "
        "NULL::TIMESTAMPTZ AS ts, NULL::VARCHAR AS ref WHERE FALSE"
    )  # fmt: skip
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _attr_raw AS
        WITH r AS ({raw})
        SELECT o.asset_id, r.attribute, r.value, r.source_table, r.rule, r.confidence, r.ts, r.ref
        FROM r JOIN _reach o ON NOT r.by_mac AND o.ip = r.ip AND (r.mac IS NULL OR o.mac IS NOT DISTINCT FROM r.mac)
        UNION ALL
        SELECT a.asset_id, r.attribute, r.value, r.source_table, r.rule, r.confidence, r.ts, r.ref
        FROM r JOIN _assets a ON r.by_mac AND a.mac = r.mac
    """)

    # Protocols served and used: flows whose side is this asset's own (MAC, IP).
    if "flows" in columns:
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE _protocols AS
            SELECT o.asset_id, 'served' AS how, f.application FROM flows f
            JOIN _reach o ON o.ip = f.server_ip AND o.mac IS NOT DISTINCT FROM lower(f.server_mac)
            WHERE f.application IS NOT NULL AND f.packets_to_client > 0
            UNION
            SELECT o.asset_id, 'used', f.application FROM flows f
            JOIN _reach o ON o.ip = f.client_ip AND o.mac IS NOT DISTINCT FROM lower(f.client_mac)
            WHERE f.application IS NOT NULL
            UNION
            -- a cyclic client: one long session with many requests (an HMI or SCADA poll, not a one-off look)
            SELECT o.asset_id, 'polled', f.application FROM flows f
            JOIN _reach o ON o.ip = f.client_ip AND o.mac IS NOT DISTINCT FROM lower(f.client_mac)
            WHERE f.application IS NOT NULL AND f.packets_to_server >= {POLL_MINIMUM_REQUESTS}
                AND f.duration >= {POLL_MINIMUM_SECONDS}
        """)
        _insert_ics_client_facts(con, columns)
    else:
        con.execute("CREATE OR REPLACE TEMP TABLE _protocols (asset_id VARCHAR, how VARCHAR, application VARCHAR)")
    dhcp_servers: set[str] = set()
    if "dhcp" in columns and "server_id" in columns["dhcp"]:
        dhcp_servers = {
            row[0]
            for row in con.execute(
                "SELECT DISTINCT o.asset_id FROM dhcp d JOIN _own o ON o.ip = d.server_id WHERE d.op = 2"
            ).fetchall()
        }

    derived = _derive_per_asset(con, kb, rules, dhcp_servers)
    con.register("_derived_arrow", derived)
    con.execute("INSERT INTO _attr_raw SELECT * FROM _derived_arrow")
    con.unregister("_derived_arrow")
    _write_tables(store, summary)
    for name in ("_obs", "_ipclass", "_pairs", "_assets", "_own", "_reach", "_seen", "_attr_raw", "_protocols"):
        con.execute(f"DROP TABLE IF EXISTS {name}")
    return summary


_DERIVED_SCHEMA = pa.schema(
    [
        ("asset_id", pa.string()),
        ("attribute", pa.string()),
        ("value", pa.string()),
        ("source_table", pa.string()),
        ("rule", pa.string()),
        ("confidence", pa.float64()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("ref", pa.string()),
    ]
)


def _derive_per_asset(con: Any, kb: KnowledgeBase, rules: Sequence[RoleRule], dhcp_servers: set[str]) -> pa.Table:
    """OUI, provenance and role rows: one pass per asset, not per packet."""
    assets = con.execute("""
        WITH r AS (SELECT mac, count(*) AS routed FROM _pairs WHERE NOT own AND mac IS NOT NULL GROUP BY mac)
        SELECT a.asset_id, a.mac, s.first_seen, coalesce(r.routed, 0) AS routed
        FROM _assets a LEFT JOIN _seen s USING (asset_id) LEFT JOIN r ON r.mac = a.mac ORDER BY a.asset_id
    """).fetchall()
    values: dict[str, dict[str, list[tuple[str, float]]]] = {}
    for asset_id, attribute, value, confidence in con.execute("""
        SELECT asset_id, attribute, value, max(confidence) AS c FROM _attr_raw
        GROUP BY ALL ORDER BY asset_id, attribute, c DESC, value
    """).fetchall():
        values.setdefault(asset_id, {}).setdefault(attribute, []).append((value, confidence))
    protocols: dict[str, set[str]] = {}
    for asset_id, how, application in con.execute("SELECT asset_id, how, application FROM _protocols").fetchall():
        protocols.setdefault(asset_id, set()).add(f"{_FACT_PREFIX.get(how, how)}:{application}")
    assignments = oui.vendors([mac for _, mac, _, _ in assets])
    rows: list[dict[str, Any]] = []

    def add(
        asset_id: str, attribute: str, value: str, table: str, rule: str, confidence: float, ts: Any, ref: str
    ) -> None:
        rows.append(
            {
                "asset_id": asset_id,
                "attribute": attribute,
                "value": value,
                "source_table": table,
                "rule": rule,
                "confidence": confidence,
                "ts": ts,
                "ref": ref,
            }
        )

    for (asset_id, _mac, first_seen, routed), assignment in zip(assets, assignments, strict=True):
        seen = values.get(asset_id, {})
        candidates: list[tuple[str, float, str]] = [  # (name, confidence, where it came from)
            (value, confidence, f"vendor={value}") for value, confidence in seen.get("vendor", [])
        ]
        if assignment is not None:
            ref = f"{assignment.block} {assignment.prefix}"
            add(asset_id, "oui_vendor", assignment.organisation, "oui", "ieee_oui_registry", 0.5, first_seen, ref)
            add(asset_id, "oui_block", assignment.block, "oui", "ieee_oui_registry", 0.5, first_seen, ref)
            if assignment.country:
                add(asset_id, "oui_country", assignment.country, "oui", "ieee_oui_registry", 0.5, first_seen, ref)
            candidates.append((assignment.organisation, 0.5, f"oui {assignment.prefix}"))
        for value, confidence in seen.get("description", []) + seen.get("model", []):
            words = value.split()
            candidates += [(" ".join(words[:n]), confidence * 0.6, f"text={value}") for n in (1, 2) if len(words) >= n]
        facts = set(protocols.get(asset_id, set()))
        resolved: set[str] = set()
        for name, confidence, origin in candidates:
            found = kb.lookup(name)
            if found is None or (found.maker is None and not found.memberships):
                continue
            maker = found.maker.name if found.maker is not None else name
            if maker in resolved:
                continue
            resolved.add(maker)
            rule = f"provenance_{found.matched_by}"
            add(asset_id, "maker", maker, "provenance", rule, round(confidence, 3), first_seen, origin)
            if found.country:
                add(
                    asset_id,
                    "maker_country",
                    found.country,
                    "provenance",
                    rule,
                    round(confidence, 3),
                    first_seen,
                    maker,
                )
            for role in found.chain[0].roles if found.chain else ():
                add(asset_id, "maker_role", role, "provenance", rule, round(confidence, 3), first_seen, maker)
                facts.add(f"maker_role:{role}")
            for membership in found.memberships:
                add(asset_id, "listed", membership.list_name, "provenance", rule, round(confidence, 3), first_seen,
                    f"{maker} listed as {membership.listed_name}")  # fmt: skip
        facts |= {f"capability:{value}" for value, _ in seen.get("capability", [])}
        if routed >= ROUTES_FOR_ROLE_MINIMUM:
            facts.add("routes_for")
        if asset_id in dhcp_servers:
            facts.add("serves:dhcp")
        plain = {name: [value for value, _ in vals] for name, vals in seen.items()}
        fired = evaluate_roles(facts, plain, rules)
        for rule_, evidence in fired:
            add(asset_id, "role", rule_.role, "asset_roles.yaml", rule_.id, rule_.confidence, first_seen,
                "; ".join([rule_.reason, *evidence]))  # fmt: skip
        if not fired:
            add(asset_id, "role", "unknown", "asset_roles.yaml", "no-rule-matched", 0.0, first_seen, "")
    return pa.Table.from_pylist(rows, schema=_DERIVED_SCHEMA)


def _write_tables(store: Store, summary: InventorySummary) -> None:
    """Replace both tables in one transaction: readers see the old inventory or the new one, never half."""
    con = store.connection
    multi = ", ".join(f"'{name}'" for name in sorted(MULTI_VALUED))
    best = ",\n".join(
        f"list(value ORDER BY confidence DESC, observations DESC, value) FILTER (WHERE attribute = '{name}')[1] "
        f"AS {name}"
        for name in BEST_COLUMNS
    )
    con.execute("BEGIN TRANSACTION")
    try:
        for name, schema in ((ASSETS_TABLE, ASSETS_SCHEMA), (ATTRIBUTES_TABLE, ATTRIBUTES_SCHEMA)):
            con.execute(f'DROP TABLE IF EXISTS "{name}"')
            store.ensure_table(name, schema)
        con.execute(f"""
            INSERT INTO {ATTRIBUTES_TABLE} BY NAME
            WITH g AS (
                SELECT asset_id, attribute, value, source_table, rule,
                    coalesce(list(ref ORDER BY ts, ref) FILTER (WHERE ref <> '')[1:{EVIDENCE_LIMIT}], [])
                        AS evidence, count(*) AS observations,
                    max(confidence) AS confidence, min(ts) AS first_seen
                FROM (SELECT DISTINCT * FROM _attr_raw) GROUP BY ALL
            ),
            d AS (
                SELECT asset_id, attribute, count(DISTINCT lower(value)) AS n FROM g GROUP BY ALL
            )
            SELECT g.*, CASE WHEN g.attribute IN ({multi}) THEN 0 ELSE d.n - 1 END AS conflicts
            FROM g JOIN d USING (asset_id, attribute)
            ORDER BY asset_id, attribute, confidence DESC, value, source_table, rule
        """)
        con.execute(f"""
            INSERT INTO {ASSETS_TABLE} BY NAME
            WITH b AS (
                SELECT asset_id,
                    {best},
                    list(value ORDER BY confidence DESC, observations DESC, value)
                        FILTER (WHERE attribute = 'vendor')[1] AS device_vendor,
                    list(value ORDER BY confidence DESC, observations DESC, value)
                        FILTER (WHERE attribute = 'oui_vendor')[1] AS vendor,
                    list(value ORDER BY confidence DESC) FILTER (WHERE attribute = 'oui_block')[1] AS oui_block,
                    list(value ORDER BY confidence DESC) FILTER (WHERE attribute = 'oui_country')[1] AS oui_country,
                    list(value ORDER BY confidence DESC, value) FILTER (WHERE attribute = 'maker')[1] AS maker,
                    list(value ORDER BY confidence DESC, value) FILTER (WHERE attribute = 'maker_country')[1]
                        AS maker_country,
                    list(DISTINCT value ORDER BY value) FILTER (WHERE attribute = 'maker_role') AS maker_roles,
                    list(DISTINCT value ORDER BY value) FILTER (WHERE attribute = 'listed') AS listed,
                    list(value ORDER BY confidence DESC, rule) FILTER (WHERE attribute = 'role')[1] AS role,
                    max(confidence) FILTER (WHERE attribute = 'role') AS role_confidence,
                    list(DISTINCT attribute ORDER BY attribute) FILTER (WHERE conflicts > 0) AS conflicts,
                    sum(observations) FILTER (WHERE source_table NOT IN ('oui', 'provenance', 'asset_roles.yaml'))
                        AS evidence_count
                FROM {ATTRIBUTES_TABLE} GROUP BY asset_id
            ),
            seen AS (SELECT * FROM _seen),
            own AS (
                SELECT asset_id, list(DISTINCT ip ORDER BY ip) AS ips FROM _own GROUP BY asset_id
            ),
            routed AS (
                SELECT a.asset_id, list(p.ip ORDER BY p.ip)[1:{ROUTES_FOR_LIMIT}] AS routes_for,
                    count(*) AS routed_ips
                FROM _assets a JOIN _pairs p ON p.mac = a.mac AND NOT p.own GROUP BY a.asset_id
            ),
            proto AS (
                SELECT asset_id,
                    list(DISTINCT application ORDER BY application) FILTER (WHERE how = 'served') AS served,
                    list(DISTINCT application ORDER BY application) FILTER (WHERE how = 'used') AS used
                FROM _protocols GROUP BY asset_id
            )
            SELECT a.asset_id, a.mac, b.vendor, b.oui_block, b.oui_country, b.device_vendor,
                coalesce(own.ips, []) AS ips, coalesce(routed.routes_for, []) AS routes_for,
                coalesce(routed.routed_ips, 0) AS routed_ips, coalesce(seen.vlans, []) AS vlans,
                seen.first_seen, seen.last_seen, coalesce(b.role, 'unknown') AS role,
                coalesce(b.role_confidence, 0) AS role_confidence, b.model, b.firmware, b.serial, b.hostname,
                coalesce(proto.served, []) AS protocols_served, coalesce(proto.used, []) AS protocols_used,
                b.maker, b.maker_country, coalesce(b.maker_roles, []) AS maker_roles,
                coalesce(b.listed, []) AS listed, coalesce(b.conflicts, []) AS conflicts,
                coalesce(b.evidence_count, 0) AS evidence_count
            FROM _assets a LEFT JOIN b USING (asset_id) LEFT JOIN seen USING (asset_id) LEFT JOIN own USING (asset_id)
                LEFT JOIN routed USING (asset_id) LEFT JOIN proto USING (asset_id)
            ORDER BY a.mac NULLS LAST, a.asset_id
        """)
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    summary.assets = con.execute(f"SELECT count(*) FROM {ASSETS_TABLE}").fetchall()[0][0]
    summary.attributes = con.execute(f"SELECT count(*) FROM {ATTRIBUTES_TABLE}").fetchall()[0][0]
    summary.roles = dict(con.execute(f"SELECT role, count(*) FROM {ASSETS_TABLE} GROUP BY role ORDER BY 1").fetchall())
    summary.listed = con.execute(f"SELECT count(*) FROM {ASSETS_TABLE} WHERE len(listed) > 0").fetchall()[0][0]
    summary.conflicts = con.execute(f"SELECT count(*) FROM {ASSETS_TABLE} WHERE len(conflicts) > 0").fetchall()[0][0]
