"""CCTV recording: RTSP control, RTP video and RTCP reports, as tshark and quaywatch's analysis see them."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from quaywatch.analysis import Analyzer
from quaywatch.assets.inventory import build_inventory
from quaywatch.sim.engine import SimulationContext, run
from quaywatch.sim.model import TerminalModel, load_model
from quaywatch.sim.normal.cctv import CctvStreams
from quaywatch.sim.pcapng import PcapngWriter
from quaywatch.store.database import Store
from tests.sim.sources import fields

DURATION = 40.0
BUCKETS = ("rtp", "rtcp", "rtsp", "http", "tcp", "data")


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Store, TerminalModel, dict[str, int]]:
    """The CCTV source alone for 40 simulated seconds, analysed and inventoried."""
    directory = tmp_path_factory.mktemp("cctv")
    model = load_model()
    context = SimulationContext(model, 2, model.start_epoch, model.start_epoch + DURATION, 1.0)
    summary = run(context, [CctvStreams(context)], directory / "capture.pcapng")
    store = Store(directory / "q.duckdb")
    Analyzer(store).analyze(directory / "capture.pcapng")
    build_inventory(store)
    return directory / "capture.pcapng", store, model, summary.packets_by_protocol


def rows(store: Store, sql: str) -> list[dict[str, Any]]:
    cursor = store.connection.execute(sql)
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def cameras(model: TerminalModel) -> list[Any]:
    return [device for device in model.devices if device.role == "camera"]


def test_tshark_warns_on_nothing_and_counts_what_the_generator_counted(
    recording: tuple[Path, Store, TerminalModel, dict[str, int]],
) -> None:
    capture, _, _, accounted = recording
    heuristics = ("--enable-heuristic", "rtp_udp")
    warnings = fields(
        capture, "frame.number", display_filter="_ws.malformed || _ws.expert.severity >= warning", options=heuristics
    )
    assert warnings == []
    counted: collections.Counter[str] = collections.Counter()
    for (protocols,) in fields(capture, "frame.protocols"):
        known = [name for name in protocols.split(":") if name in BUCKETS]
        counted[known[-1]] += 1
    assert dict(counted) == accounted
    # with the RTP heuristic on, every video packet, also of sessions set up before the capture, is RTP
    video = fields(capture, "rtp.p_type", display_filter="rtp && !rtcp", options=heuristics)
    assert len(video) == accounted["rtp"] + accounted["data"]
    assert {value for (value,) in video} == {"96"}


def test_rtp_streams_have_continuous_sequences_90khz_timestamps_and_the_configured_rate(
    recording: tuple[Path, Store, TerminalModel, dict[str, int]],
) -> None:
    capture, _, model, _ = recording
    packets = fields(capture, "rtp.ssrc", "rtp.seq", "rtp.timestamp", "rtp.marker", "frame.time_epoch",
                     display_filter="rtp && !rtcp", options=("--enable-heuristic", "rtp_udp"))  # fmt: skip
    streams: dict[str, list[tuple[int, int, str, float]]] = collections.defaultdict(list)
    for ssrc, sequence, timestamp, marker, moment in packets:
        streams[ssrc].append((int(sequence), int(timestamp), marker, float(moment)))
    assert len(streams) == len(cameras(model))
    for ssrc, stream in streams.items():
        sequences = np.array([item[0] for item in stream])
        stamps = np.array([item[1] for item in stream], np.int64)
        assert np.all(np.diff(sequences) % 65536 == 1), ssrc
        assert np.all(np.diff(stamps) % (1 << 32) == 3600), ssrc  # 90 kHz at 25 frames/s
        assert {item[2] for item in stream} == {"1"}  # one NAL unit per picture: every packet ends its picture
        seconds = stream[-1][3] - stream[0][3]
        assert abs((len(stream) - 1) / seconds - 25) < 0.5


def test_rtsp_shows_camera_servers_keepalives_and_one_whole_setup(
    recording: tuple[Path, Store, TerminalModel, dict[str, int]],
) -> None:
    _, store, model, _ = recording
    requests = rows(store, "SELECT * FROM rtsp WHERE method IS NOT NULL ORDER BY ts")
    by_camera: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for request in requests:
        by_camera[request["server_ip"]].append(request)
    assert set(by_camera) == {camera.ip for camera in cameras(model)}
    for camera in cameras(model):
        seen = by_camera[camera.ip]
        assert any(request["method"] == "GET_PARAMETER" and request["status_code"] == 200 for request in seen)
        expected = f"AXIS {camera.model} Media Server" if camera.maker == "Axis" else "Hikvision-Webs"
        assert all(request["server"].startswith(expected) for request in seen), camera.name
        client = model.device("nvr") if camera.zone == "cctv" else model.device(f"sts{camera.crane:02d}-ocr")
        assert {request["client_ip"] for request in seen} == {client.ip}
    setups = [request for request in requests if request["method"] == "SETUP"]
    assert len(setups) == 1
    session = [request for request in by_camera[setups[0]["server_ip"]] if request["method"] != "GET_PARAMETER"]
    assert [(request["method"], request["status_code"]) for request in session] == [
        ("OPTIONS", 200), ("DESCRIBE", 401), ("DESCRIBE", 200), ("SETUP", 200), ("PLAY", 200),
    ]  # fmt: skip
    assert session[2]["response_content_type"] == "application/sdp" and session[2]["user_name"] == "recorder"
    assert "client_port=" in setups[0]["rtsp_transport"] and "server_port=" in setups[0]["rtsp_transport"]


def test_rtcp_sender_reports_come_every_five_seconds(
    recording: tuple[Path, Store, TerminalModel, dict[str, int]],
) -> None:
    capture, _, model, _ = recording
    reports = fields(capture, "rtcp.senderssrc", "frame.time_epoch", display_filter="rtcp.pt == 200")
    by_source: dict[str, list[float]] = collections.defaultdict(list)
    for ssrc, moment in reports:
        by_source[ssrc].append(float(moment))
    assert len(by_source) == len(cameras(model))
    for times in by_source.values():
        assert np.allclose(np.diff(times), 5.0, atol=0.01)


def test_the_inventory_calls_cameras_cameras_and_the_recorder_an_nvr(
    recording: tuple[Path, Store, TerminalModel, dict[str, int]],
) -> None:
    _, store, model, _ = recording
    roles = {row["mac"]: row["role"] for row in rows(store, "SELECT mac, role FROM assets")}
    for camera in cameras(model):
        assert roles[camera.mac] == "camera", camera.name
    assert roles[model.device("nvr").mac] == "NVR"


def test_the_nvr_reads_onvif_device_information_from_each_camera(tmp_path: Path) -> None:
    """The ONVIF GetDeviceInformation exchange (every 5-15 minutes, so not in a short run) on its own."""
    model = load_model()
    context = SimulationContext(model, 2, model.start_epoch, model.start_epoch + 60.0, 1.0)
    source = CctvStreams(context)
    blocks = []
    for number, (session, _) in enumerate(source.onvif):
        blocks += source._onvif(session, model.start_epoch + number)
    capture = tmp_path / "onvif.pcapng"
    with capture.open("wb") as handle:
        PcapngWriter(handle, "onvif").write(blocks, {})
    assert fields(capture, "frame.number", display_filter="_ws.malformed || _ws.expert.severity >= warning") == []
    store = Store(tmp_path / "q.duckdb")
    Analyzer(store).analyze(capture)
    store.flush()
    exchanges = {row["server_ip"]: row for row in rows(store, "SELECT * FROM http WHERE method IS NOT NULL")}
    recorded = [camera for camera in cameras(model) if camera.zone == "cctv"]
    assert set(exchanges) == {camera.ip for camera in recorded}
    for camera in recorded:
        exchange = exchanges[camera.ip]
        assert (exchange["method"], exchange["uri"], exchange["status_code"]) == ("POST", "/onvif/device_service", 200)
        assert exchange["server"] == ("Apache" if camera.maker == "Axis" else "App-webs/")
        assert exchange["client_ip"] == model.device("nvr").ip
