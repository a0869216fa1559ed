"""Country and autonomous system of internet addresses, from MaxMind DB files the site carries in.

An air-gapped port cannot look addresses up online, and quaywatch downloads nothing. What a site can do is copy a
geolocation database onto the sensor: MaxMind's GeoLite2 or GeoIP2 Country/City and ASN files, DB-IP's free "IP to
Country Lite" and "IP to ASN Lite" (CC BY 4.0), or IPinfo's Lite file, all in the MaxMind DB format read by
:mod:`maxminddb`. Each file answers what it knows (country, or AS number and organisation); several files are
combined, the first to answer a field wins. Every answer names the file and its build date, since a country from a
two-year-old file is weaker evidence than one from last week's.

The strings in these files come from third parties: outputs escape them like packet-derived strings.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import maxminddb

#: Addresses no geolocation file places: RFC 1918 and RFC 6598 (carrier-grade NAT) space, IPv6 unique local
#: addresses (RFC 4193). Documentation ranges (RFC 5737, RFC 3849) are looked up like any other, since the
#: simulator's internet hosts use them.
SITE_NETWORKS = tuple(
    ipaddress.ip_network(network)
    for network in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)


class GeoDatabaseError(ValueError):
    """A database file that cannot be used; the message names the file."""


@dataclass(frozen=True, slots=True)
class GeoSource:
    """One opened database file and what it says about itself."""

    path: Path
    database_type: str
    built: dt.date

    def describe(self) -> str:
        return f"{self.path.name} ({self.database_type}, built {self.built.isoformat()})"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _fields(record: Mapping[str, Any]) -> dict[str, str]:
    """The country and AS fields of one record, in MaxMind's and IPinfo Lite's layouts."""
    out: dict[str, str] = {}
    country = record.get("country") or record.get("registered_country")
    if isinstance(country, Mapping):  # MaxMind GeoLite2/GeoIP2, DB-IP
        out["country"] = _text(country.get("iso_code"))
        names = country.get("names")
        out["country_name"] = _text(names.get("en")) if isinstance(names, Mapping) else ""
    elif isinstance(record.get("country_code"), str):  # IPinfo Lite: flat fields
        out["country"] = _text(record.get("country_code"))
        out["country_name"] = _text(country)
    number = record.get("autonomous_system_number")
    if isinstance(number, int):
        out["asn"] = f"AS{number}"
        out["organisation"] = _text(record.get("autonomous_system_organization"))
    elif isinstance(record.get("asn"), str):  # IPinfo Lite: "AS4134"
        out["asn"] = _text(record.get("asn"))
        out["organisation"] = _text(record.get("as_name"))
    return {key: value for key, value in out.items() if value}


class GeoDatabases:
    """Several MaxMind DB files read as one: ``lookup(ip)`` gives country, country name, ASN and organisation."""

    def __init__(self, paths: Iterable[Path]) -> None:
        self.readers: list[tuple[GeoSource, maxminddb.Reader]] = []
        for path in paths:
            try:
                reader = maxminddb.open_database(str(path))
            except FileNotFoundError as error:
                raise GeoDatabaseError(f"{path}: no such GeoIP database file") from error
            except (OSError, ValueError, maxminddb.InvalidDatabaseError) as error:
                raise GeoDatabaseError(f"{path}: not a usable MaxMind DB file: {error}") from error
            metadata = reader.metadata()
            built = dt.datetime.fromtimestamp(int(metadata.build_epoch), dt.UTC).date()
            self.readers.append((GeoSource(Path(path), str(metadata.database_type), built), reader))
        self._cached = lru_cache(maxsize=65536)(self._lookup)

    @property
    def sources(self) -> list[GeoSource]:
        return [source for source, _ in self.readers]

    def close(self) -> None:
        for _, reader in self.readers:
            reader.close()

    def lookup(self, ip: str) -> dict[str, str]:
        """What the files know of ``ip`` (empty for private, unknown or malformed addresses), with ``source``."""
        return dict(self._cached(ip))

    def _lookup(self, ip: str) -> tuple[tuple[str, str], ...]:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return ()
        if address.is_loopback or address.is_link_local or address.is_multicast or address.is_unspecified:
            return ()
        if any(address in network for network in SITE_NETWORKS if network.version == address.version):
            return ()
        found: dict[str, str] = {}
        sources: list[str] = []
        for source, reader in self.readers:
            try:
                record = reader.get(address)
            except (ValueError, maxminddb.InvalidDatabaseError):  # an IPv6 address in an IPv4-only file, a bad node
                continue
            if not isinstance(record, Mapping):
                continue
            fields = {key: value for key, value in _fields(record).items() if key not in found}
            if fields:
                found |= fields
                sources.append(source.describe())
        if sources:
            found["source"] = "; ".join(sources)
        return tuple(found.items())

    def __call__(self, ip: str) -> dict[str, str]:
        """An enricher for the detections (``DetectionContext.enrichers``): country and ASN with their names."""
        found = self.lookup(ip)
        out: dict[str, str] = {}
        if "country" in found:
            out["country"] = found["country"] + (f" ({found['country_name']})" if "country_name" in found else "")
        if "asn" in found:
            out["asn"] = found["asn"] + (f" ({found['organisation']})" if "organisation" in found else "")
        if "source" in found:
            out["geoip_source"] = found["source"]
        return out
