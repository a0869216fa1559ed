"""Corporate browsing: DNS before every session, TLS with SNI and real certificates, HTTP, the day rhythm."""

from __future__ import annotations

import collections
import hashlib
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from quaywatch.analysis import Analyzer
from quaywatch.sim.engine import SimulationContext, run
from quaywatch.sim.model import TerminalModel, load_model
from quaywatch.sim.normal.corporate import CorporateBrowsing, certificate_chain
from quaywatch.store.database import Store
from tests.sim.sources import fields

DURATION = 90.0
BUCKETS = ("dns", "tls", "http", "tcp")


def browse(directory: Path, seed: int = 4, duration: float = DURATION) -> tuple[Path, dict[str, int], TerminalModel]:
    model = load_model()
    context = SimulationContext(model, seed, model.start_epoch, model.start_epoch + duration, 1.0)
    directory.mkdir(parents=True, exist_ok=True)
    summary = run(context, [CorporateBrowsing(context)], directory / "capture.pcapng")
    return directory / "capture.pcapng", summary.packets_by_protocol, model


@pytest.fixture(scope="module")
def browsing(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Store, TerminalModel, dict[str, int]]:
    directory = tmp_path_factory.mktemp("corporate")
    capture, accounted, model = browse(directory)
    store = Store(directory / "q.duckdb")
    Analyzer(store).analyze(capture)
    store.flush()
    return capture, store, model, accounted


def rows(store: Store, sql: str) -> list[dict[str, Any]]:
    cursor = store.connection.execute(sql)
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def test_tshark_warns_on_nothing_and_counts_what_the_generator_counted(
    browsing: tuple[Path, Store, TerminalModel, dict[str, int]],
) -> None:
    capture, _, _, accounted = browsing
    warnings = fields(capture, "frame.number", display_filter="_ws.malformed || _ws.expert.severity >= warning")
    assert warnings == []
    counted: collections.Counter[str] = collections.Counter()
    for (protocols,) in fields(capture, "frame.protocols"):
        known = [name for name in protocols.split(":") if name in BUCKETS]
        counted[known[-1]] += 1
    assert dict(counted) == accounted
    assert accounted["tls"] > 100 and accounted["http"] > 0


def test_every_session_resolves_its_name_first_and_tls_names_it(
    browsing: tuple[Path, Store, TerminalModel, dict[str, int]],
) -> None:
    _, store, model, _ = browsing
    hellos = rows(store, "SELECT * FROM tls WHERE handshake_type = 1")
    assert len(hellos) >= 10
    answers = rows(store, "SELECT client_ip, query_name, answer_data, ts FROM dns WHERE len(answer_data) > 0")
    laptops = {device.ip for device in model.find(role="workstation", zone="corporate-it")}
    domains = {device.domain: device.ip for device in model.devices if device.role == "website"}
    domains[f"tos-app.{model.domain}"] = model.device("tos-app").ip
    for hello in hellos:
        assert hello["client_ip"] in laptops
        assert domains[hello["server_name"]] == hello["server_ip"]
        assert any(
            answer["client_ip"] == hello["client_ip"] and answer["query_name"] == hello["server_name"]
            and answer["answer_data"] == [hello["server_ip"]] and answer["ts"] < hello["ts"]
            for answer in answers
        ), hello["server_name"]  # fmt: skip
    assert any(hello["server_name"] == f"tos-app.{model.domain}" for hello in hellos)


def test_servers_present_real_certificates_for_their_names(
    browsing: tuple[Path, Store, TerminalModel, dict[str, int]],
) -> None:
    _, store, model, _ = browsing
    certificates = rows(store, "SELECT * FROM tls_certificate")
    assert certificates
    leaves = [
        row for row in certificates if not row["subject"].startswith("CN=Simulated") and "Issuing" not in row["subject"]
    ]
    assert leaves
    for leaf in leaves:
        name = leaf["subject"].removeprefix("CN=")
        assert leaf["san_dns"] == [name]
        expected = "Terminal Internal Issuing CA" if name.startswith("tos-app.") else "Simulated Web CA E1"
        assert f"CN={expected}" in leaf["issuer"]
    der, issuer_der = certificate_chain(
        4, "www.site1.example", ("Simulated Web CA E1", "Example Trust Services", "US"), model.start_epoch
    )
    leaf_certificate, issuer = x509.load_der_x509_certificate(der), x509.load_der_x509_certificate(issuer_der)
    leaf_certificate.verify_directly_issued_by(issuer)  # a real, correctly signed chain


def test_http_requests_carry_browser_agents_and_servers_answer_200(
    browsing: tuple[Path, Store, TerminalModel, dict[str, int]],
) -> None:
    _, store, model, _ = browsing
    exchanges = rows(store, "SELECT * FROM http WHERE method IS NOT NULL")
    assert exchanges
    domains = {device.domain for device in model.devices if device.role == "website"}
    for exchange in exchanges:
        assert exchange["method"] == "GET" and exchange["host"] in domains
        assert exchange["user_agent"].startswith("Mozilla/5.0 (Windows NT 10.0; Win64; x64")
        assert exchange["status_code"] == 200 and exchange["server"]


def test_the_same_seed_gives_the_same_bytes(tmp_path: Path) -> None:
    first, _, _ = browse(tmp_path / "a", seed=9, duration=20.0)
    second, _, _ = browse(tmp_path / "b", seed=9, duration=20.0)
    assert hashlib.sha256(first.read_bytes()).digest() == hashlib.sha256(second.read_bytes()).digest()


def test_sessions_follow_the_work_hours() -> None:
    """Tuesday 10:00 has many times the sessions of Tuesday 02:00 and of Sunday 10:00."""
    model = load_model()

    def sessions(hours_after_start: float) -> int:
        start = model.start_epoch + hours_after_start * 3600
        return len(CorporateBrowsing(SimulationContext(model, 1, start, start + 3600, 1.0)).sessions)

    day, night, sunday = sessions(0), sessions(16), sessions(5 * 24)
    assert day > 10 * max(night, 1) and day > 10 * max(sunday, 1)
    assert night > 0


def test_each_laptop_keeps_its_browser_and_the_office_has_several(
    browsing: tuple[Path, Store, TerminalModel, dict[str, int]],
) -> None:
    """data/sim/tls_clients.yaml: one ClientHello shape per laptop for the whole run, not one for the whole office."""
    _, store, _, _ = browsing
    per_laptop = rows(store, "SELECT client_ip, list(DISTINCT ja4) AS ja4s FROM tls WHERE ja4 IS NOT NULL GROUP BY 1")
    assert len(per_laptop) > 3
    assert all(len(row["ja4s"]) == 1 for row in per_laptop), per_laptop
    assert len({row["ja4s"][0] for row in per_laptop}) >= 2
