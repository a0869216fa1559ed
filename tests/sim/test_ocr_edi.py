"""The container data path, run alone: OCR reads, TOS messages and EDIFACT over FTP and SFTP, checked by tshark and
by quaywatch's own pipeline."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import pytest

from quaywatch.sim import edifact
from quaywatch.sim.engine import SimulationContext, run
from quaywatch.sim.model import load_model
from quaywatch.sim.normal.ocr_edi import OcrEdi
from quaywatch.sim.physics import check_digit
from tests.sim.sources import Generated, analyse, generate, policy_check, rows, tshark, tshark_buckets, warnings

CONTAINER = re.compile(rb"[A-Z]{3}U\d{7}")


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Generated:
    # 100 s from 09:55: the BAPLIE (20 s), the first COARRI (40 s) and CODECO (70 s) and their SFTP forwards.
    return generate(tmp_path_factory.mktemp("ocr_edi"), OcrEdi, seed=3, duration=100, cranes=3)


@pytest.fixture(scope="module")
def store(generated: Generated) -> Path:
    return analyse(generated)


def streams(capture: Path, display_filter: str) -> dict[str, bytes]:
    """Client-to-server payload of each TCP stream matching the filter, in order."""
    joined: dict[str, bytearray] = defaultdict(bytearray)
    for line in tshark(
        capture, "-Y", display_filter, "-T", "fields", "-e", "tcp.stream", "-e", "tcp.payload"
    ).splitlines():
        stream, _, payload = line.partition("\t")
        joined[stream] += bytes.fromhex(payload)
    return {stream: bytes(data) for stream, data in joined.items()}


def test_tshark_decodes_everything_cleanly_and_agrees_with_the_accounting(generated: Generated) -> None:
    assert warnings(generated.capture) == ""
    seen = tshark_buckets(generated.capture, set(generated.summary.packets_by_protocol))
    assert dict(seen) == generated.summary.packets_by_protocol
    assert {"http", "ftp", "ftp-data", "ssh", "tcp"} <= set(seen)


def test_every_container_id_passes_the_iso_6346_check_digit(generated: Generated) -> None:
    payloads = streams(generated.capture, "http || ftp-data")
    found = {match.decode() for data in payloads.values() for match in CONTAINER.findall(data)}
    assert len(found) > 20
    assert all(check_digit(container[:10]) == int(container[10]) for container in found)
    physics = generated.context.physics
    lifted = {
        move.container
        for crane in physics.moves
        for move in physics.moves_between(crane, generated.context.start - 1.5, generated.context.end - 1.5)
    }
    assert lifted and lifted <= found  # every box the cranes locked on was read by its OCR


def test_every_edifact_file_is_well_formed(generated: Generated) -> None:
    files = list(streams(generated.capture, "ftp-data").values())
    kinds: set[str] = set()
    for data in files:
        text = data.decode("ascii")
        assert edifact.problems(text) == []
        kinds |= {edifact.elements(segment)[2][0] for segment in edifact.split_segments(text) if segment[:3] == "UNH"}
    assert kinds == {"BAPLIE", "COARRI", "CODECO"}
    baplie = next(data.decode() for data in files if b"BAPLIE:D:95B" in data)
    parts = [edifact.elements(segment) for segment in edifact.split_segments(baplie)]
    qualified = [f"{part[0][0]}+{part[1][0]}" for part in parts if len(part) > 1]
    cells = qualified.count("LOC+147")
    assert cells > 0
    assert qualified.count("EQD+CN") == qualified.count("LOC+9") == qualified.count("LOC+11") == cells
    stowage = [part[2][0] for part in parts if part[0][0] == "LOC" and part[1][0] == "147"]
    assert all(re.fullmatch(r"\d{7}", cell) for cell in stowage)


def test_quaywatch_decodes_the_ocr_posts_the_ftp_upload_and_the_sftp_banners(generated: Generated, store: Path) -> None:
    http = rows(store, "SELECT method, uri, status_code, user_agent, server_ip FROM http")
    uris = {row["uri"] for row in http}
    assert uris == {"/cos/api/v1/reads", "/apex/services/argoservice", "/cms/api/v1/workorders"}
    assert all(row["method"] == "POST" and row["status_code"] in (200, 202) for row in http)
    assert {row["server_ip"] for row in http if row["uri"].startswith("/cos")} == {
        generated.model.device("ocr-server").ip
    }
    commands = rows(store, "SELECT command, arg FROM ftp WHERE command IS NOT NULL")
    stored = [row["arg"] for row in commands if row["command"] == "STOR"]
    assert {name.split("_")[0] for name in stored} == {"BAPLIE", "COARRI", "CODECO"}
    banners = {
        row["software_version"] for row in rows(store, "SELECT software_version FROM ssh WHERE banner IS NOT NULL")
    }
    assert banners == {"OpenSSH_8.9p1", "OpenSSH_6.6.1"}
    cargo = rows(store, "SELECT kind, valid FROM cargo_content")
    assert cargo and all(row["valid"] is not False for row in cargo)


def test_the_data_path_complies_with_its_own_policy(generated: Generated, store: Path) -> None:
    assert "0 errors, 0 warnings" in policy_check(generated)
    verdicts = rows(store, "SELECT verdict, reason FROM flow_policy")
    assert verdicts
    bad = [row for row in verdicts if row["verdict"] in ("violation", "external_unapproved")]
    assert bad == []
    assert {row["verdict"] for row in verdicts} >= {"allowed", "intra_zone", "external_allowed"}


def test_a_crane_stop_leaves_the_other_cranes_reads_untouched(tmp_path: Path) -> None:
    """Each OCR read and upload draws from its own generator: removing one crane's moves never shifts the others."""
    captures = []
    for stop in (False, True):
        model = load_model(None, 3)
        context = SimulationContext(model, 3, model.start_epoch, model.start_epoch + 100, 1.0)
        source = OcrEdi(context)
        stopped_at = model.start_epoch + 30
        if stop:
            context.physics.stop_crane(1, stopped_at)
        run(context, [source], tmp_path / f"{stop}.pcapng")
        fields = ("frame.time_epoch", "ip.src", "ip.dst", "tcp.seq_raw", "tcp.payload")
        listing = tshark(tmp_path / f"{stop}.pcapng", "-T", "fields", *[f"-e{field}" for field in fields])
        captures.append(set(listing.splitlines()))
    clean, stopped = captures
    changed = clean ^ stopped
    crane_one = model.device("sts01-ocr").ip
    others = {model.device(f"sts{crane:02d}-ocr").ip for crane in (2, 3)}
    assert any(crane_one in line.split("\t")[1:3] for line in changed)  # crane 1's later reads are gone
    assert min(float(line.split("\t")[0]) for line in changed) >= stopped_at
    assert not [line for line in changed if others & set(line.split("\t")[1:3])]
    later = [line for line in clean if others & set(line.split("\t")[1:3]) and float(line.split("\t")[0]) > stopped_at]
    assert later  # the other cranes kept reading after the stop
