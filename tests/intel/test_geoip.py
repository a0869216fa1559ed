"""GeoIP from MaxMind DB files: real files written with mmdb-writer in the layouts of MaxMind, DB-IP and IPinfo Lite,
read with maxminddb; combined answers, private and malformed addresses, and files that cannot be used."""

from __future__ import annotations

from pathlib import Path

import pytest

from quaywatch.intel.geoip import GeoDatabaseError, GeoDatabases
from tests.intel.mmdb import write_mmdb

HOSTILE = "<script>alert(1)</script>=cmd|' /C calc'!A0"


@pytest.fixture
def country(tmp_path: Path) -> Path:
    return write_mmdb(tmp_path / "GeoLite2-Country.mmdb", "GeoLite2-Country", {
        "203.0.113.0/24": {"country": {"iso_code": "CN", "names": {"en": "China"}}},
        "2001:db8:cafe::/48": {"registered_country": {"iso_code": "NL", "names": {"en": "Netherlands"}}},
        "198.51.100.0/24": {"country": {"iso_code": "RU", "names": {"en": "Russia"}}},
    })  # fmt: skip


@pytest.fixture
def asn(tmp_path: Path) -> Path:
    return write_mmdb(tmp_path / "GeoLite2-ASN.mmdb", "GeoLite2-ASN", {
        "203.0.113.0/24": {"autonomous_system_number": 4134, "autonomous_system_organization": "CHINANET-BACKBONE"},
        "198.51.100.0/24": {"autonomous_system_number": 64500, "autonomous_system_organization": HOSTILE},
    })  # fmt: skip


def test_country_and_asn_files_answer_together_and_name_themselves(country: Path, asn: Path) -> None:
    geo = GeoDatabases([country, asn])
    found = geo.lookup("203.0.113.9")
    assert {key: found[key] for key in ("country", "country_name", "asn", "organisation")} == {
        "country": "CN", "country_name": "China", "asn": "AS4134", "organisation": "CHINANET-BACKBONE",
    }  # fmt: skip
    assert (
        "GeoLite2-Country.mmdb (GeoLite2-Country, built " in found["source"] and "GeoLite2-ASN.mmdb" in found["source"]
    )
    assert geo.lookup("2001:db8:cafe::7")["country"] == "NL"  # registered country when no located one
    assert geo("203.0.113.9")["country"] == "CN (China)" and geo("203.0.113.9")["asn"] == "AS4134 (CHINANET-BACKBONE)"
    assert geo.lookup("198.51.100.1")["organisation"] == HOSTILE  # kept raw: every output escapes it
    geo.close()


def test_private_unknown_and_malformed_addresses_have_no_answer(country: Path, asn: Path) -> None:
    geo = GeoDatabases([country, asn])
    for address in (
        "10.1.2.3",
        "192.168.0.1",
        "100.64.1.1",
        "fd00::5",
        "fe80::1",
        "127.0.0.1",
        "224.0.0.251",
        "not an address",
        "",
    ):
        assert geo.lookup(address) == {}, address
    assert geo.lookup("8.8.8.8") == {}  # global, but in neither file


def test_the_first_file_to_answer_a_field_wins_and_ipinfo_lite_is_read(tmp_path: Path, country: Path) -> None:
    ipinfo = write_mmdb(tmp_path / "ipinfo_lite.mmdb", "ipinfo_lite.mmdb", {
        "203.0.113.0/24": {"country_code": "HK", "country": "Hong Kong", "asn": "AS9304", "as_name": "HGC"},
    })  # fmt: skip
    found = GeoDatabases([country, ipinfo]).lookup("203.0.113.9")
    assert (found["country"], found["asn"], found["organisation"]) == ("CN", "AS9304", "HGC")
    assert GeoDatabases([ipinfo]).lookup("203.0.113.9")["country_name"] == "Hong Kong"


def test_a_missing_or_broken_file_is_an_error_naming_it(tmp_path: Path, country: Path) -> None:
    with pytest.raises(GeoDatabaseError, match=r"absent\.mmdb: no such GeoIP database file"):
        GeoDatabases([tmp_path / "absent.mmdb"])
    broken = tmp_path / "broken.mmdb"
    broken.write_bytes(country.read_bytes()[:-200])  # the metadata section at the end is cut off
    with pytest.raises(GeoDatabaseError, match=r"broken\.mmdb: not a usable MaxMind DB file"):
        GeoDatabases([broken])
    text = tmp_path / "notes.mmdb"
    text.write_text("GeoLite2 country\n")
    with pytest.raises(GeoDatabaseError, match=r"notes\.mmdb"):
        GeoDatabases([text])
