"""What a real terminal would hold beside the capture: its declared inventory and its site policy.

The declared inventory lists what procurement ordered, so, as in the House
investigation's findings, a modem a scenario adds is absent from it. The site
policy is built from the model's zones and from the conduits each normal
behaviour declares it needs (``Source.policy``), so normal operations are
compliant by construction and every scenario's traffic is what breaks it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from typing import Any

import yaml

from quaywatch.sim.engine import Source
from quaywatch.sim.model import DAY_NAMES, TerminalModel

POLICY_SECTIONS = ("conduits", "engineering_hosts", "remote_access", "external_destinations", "container_data")
INVENTORY_COLUMNS = ("asset_tag", "maker", "model", "mac", "ip", "location", "crane", "zone")


def declared_inventory(model: TerminalModel) -> str:
    """The CMDB export: every declared device with its tag, maker, model, MAC, addresses and place."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(INVENTORY_COLUMNS)
    for number, device in enumerate((d for d in model.devices if d.declared and not d.external), start=1):
        addresses = [address for _, address in device.gateway_ips] or [device.ip]
        location = f"STS crane {device.crane}" if device.crane else model.zones[device.zone].description
        writer.writerow(
            (
                f"TRM-{number:04d}",
                device.maker,
                f"{device.model} ({device.order_number})" if device.order_number else device.model,
                device.mac,
                ";".join(addresses),
                location,
                f"STS{device.crane:02d}" if device.crane else "",
                device.zone,
            )
        )
    return out.getvalue()


def site_policy(model: TerminalModel, sources: Iterable[Source]) -> str:
    """The terminal's IEC 62443 zones and conduits, in quaywatch's policy format (docs/policy.md)."""
    zones: list[dict[str, Any]] = []
    for zone in model.zones.values():
        entry: dict[str, Any] = {
            "name": zone.name,
            "description": zone.description,
            "purdue": zone.purdue,
            "cidrs": [str(zone.subnet)],
        }
        if zone.vlan is not None:
            entry["vlans"] = [zone.vlan]
        zones.append(entry)
    sections: dict[str, list[dict[str, Any]]] = {section: [] for section in POLICY_SECTIONS}
    for source in sources:
        for section, entries in source.policy().items():
            for entry in entries:
                if entry["name"] not in {existing["name"] for existing in sections[section]}:
                    sections[section].append(entry)
    for section, entries in _vendor_access(model).items():
        sections[section] += entries
    document: dict[str, Any] = {
        "version": 1,
        "site": model.name,
        "timezone": model.timezone.key,
        "defaults": {"inter_zone": "deny"},
        "zones": zones,
        **{section: entries for section, entries in sections.items() if entries},
    }
    header = (
        f"# Site policy of {model.name}, written by quaywatch sim from the terminal model.\n"
        "# Check it with: quaywatch policy check policy.yaml (keys: docs/policy.md)\n"
    )
    return header + yaml.safe_dump(document, sort_keys=False, width=120, allow_unicode=True)


def _vendor_access(model: TerminalModel) -> dict[str, list[dict[str, Any]]]:
    """The approved vendor path: the vendor's VPN egress to the jump host in its window, then RDP on to the CMS."""
    vendors = [device for device in model.devices if device.external and device.role == "vendor"]
    jump_hosts = [device for device in model.devices if not device.external and model.zones[device.zone].kind == "dmz"]
    if not vendors or not jump_hosts:
        return {}
    window = model.vendor_window
    cms = [zone.name for zone in model.zones.values() if zone.kind == "cms"]
    return {
        "remote_access": [
            {
                "name": "crane-vendor-maintenance",
                "method": "rdp",
                "source": [f"{device.ip}/32" for device in vendors],
                "destinations": [device.ip for device in jump_hosts],
                "timezone": model.timezone.key,
                "windows": [window_entry(window.days, window.start.strftime("%H:%M"), window.end.strftime("%H:%M"))],
                "expires": model.start.date().replace(year=model.start.year + 3),  # a standing agreement, renewed
                "reason": "crane vendor maintenance through the jump host, in the agreed window only",
            }
        ],
        "conduits": [
            {
                "name": f"vendor-dmz-to-{zone}",
                "from": jump_hosts[0].zone,
                "to": zone,
                "protocol": "rdp",
                "ports": [3389],
                "initiator": "from",
                "description": "the jump host's onward session to the crane management system",
            }
            for zone in cms
        ],
    }


def window_entry(days: tuple[int, ...], start: str, end: str) -> dict[str, Any]:
    return {"days": [DAY_NAMES[day] for day in days], "start": start, "end": end}
