"""EDIFACT building and checking: escaping with the release character, envelope and message counts."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from quaywatch.sim import edifact
from quaywatch.sim.physics import Move, container_id

AMSTERDAM = ZoneInfo("Europe/Amsterdam")
VESSEL = edifact.Vessel("O'HARA+SONS: NO?", "9HA5123", "548E", "EXL")


def move(serial: int) -> Move:
    return Move(
        1, serial, 1764060960.0, 1764061000.0, container_id("CSQU", serial), "42G1", 24_500, "discharge", 14, 2, 82,
        "CNSHA", "NLRTM",
    )  # fmt: skip


def test_special_characters_are_released_and_read_back() -> None:
    text = edifact.segment("FTX", "AAA", ("O'NEIL+CO: 50%?", "x"))
    assert text == "FTX+AAA+O?'NEIL?+CO?: 50%??:x'"
    assert edifact.split_segments(text) == [text[:-1]]
    assert edifact.elements(text[:-1])[2] == ["O'NEIL+CO: 50%?", "x"]


def test_a_value_ending_in_a_special_character_keeps_its_release() -> None:
    assert edifact.segment("RFF", ("BN", "A+"), "") == "RFF+BN:A?+'"


def test_coarri_interchange_is_well_formed_and_carries_each_box() -> None:
    moves = [move(305438), move(123456)]
    message = edifact.coarri("100101", "discharge", VESSEL, moves, 1764061200.0, AMSTERDAM)
    text = edifact.interchange("QWDCT", "EXLINE", "1001", dt.datetime(2025, 11, 25, 10, 0), [message])
    assert edifact.problems(text) == []
    segments = edifact.split_segments(text)
    assert segments[0].startswith("UNB+UNOA:2+QWDCT:ZZZ+EXLINE:ZZZ+251125:1000+1001")
    assert moves[0].container == "CSQU3054383"  # the brief's worked example
    assert f"EQD+CN+{moves[0].container}+42G1:102:5++2+5" in segments
    assert "LOC+147+0140282::5" in segments and "LOC+9+CNSHA:139:6" in segments
    assert any("O?'HARA?+SONS?: NO??" in segment for segment in segments)  # the vessel name stays one value
    unt = next(segment for segment in segments if segment.startswith("UNT"))
    assert unt == f"UNT+{segments.index(unt)}+100101"  # UNH (index 1) to UNT, both included


def test_problems_finds_wrong_counts_and_foreign_segments() -> None:
    message = edifact.codeco("200101", "gate_in", "QWDCT", [], 1764061200.0, AMSTERDAM)
    good = edifact.interchange("QWDCT", "EXLINE", "2001", dt.datetime(2025, 11, 25, 10, 0), [message])
    assert edifact.problems(good) == []
    assert any("UNT counts" in problem for problem in edifact.problems(good.replace("UNT+6+", "UNT+7+")))
    assert any("UNZ counts" in problem for problem in edifact.problems(good.replace("UNZ+1+", "UNZ+2+")))
    foreign = good.replace("CNT+16:0'", "CNT+16:0'\nPAI+1'").replace("UNT+6+", "UNT+7+")
    assert edifact.problems(foreign) == ["CODECO 200101: segment PAI is not in the CODECO message"]


def test_trailing_empty_components_and_elements_are_omitted() -> None:
    truck = edifact.segment("TDT", "1", "", "3", "31", "", ("AB-123-C", "146", "", ""), "")
    assert truck == "TDT+1++3+31++AB-123-C:146'"
    assert edifact.segment("LOC", "147", ("0140282", "", "5")) == "LOC+147+0140282::5'"
