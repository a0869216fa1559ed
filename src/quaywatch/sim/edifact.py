"""UN/EDIFACT messages of a container terminal: BAPLIE, COARRI and CODECO (directory D.95B, SMDG guides).

Pure functions, so scenarios (container-data exfiltration) can build the same
messages the terminal exchanges. Every data value goes through ``escape``:
EDIFACT's release character ``?`` must precede any ``' + : ?`` inside a value,
or a vessel name with an apostrophe would end the segment early. The segment
lists each message may carry are data (``data/sim/edifact.yaml``, with sources)
and ``problems`` checks an interchange against them and against the UNH/UNT
and UNB/UNZ counts, which is what the tests and a receiving EDI system check.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from quaywatch.sim.physics import Move
from quaywatch.yaml_files import load_yaml

UNA = "UNA:+.? '"
RELEASE = "?"
SPECIAL = re.compile(r"([?'+:])")
Element = str | Sequence[str]


@functools.cache
def reference() -> dict[str, Any]:
    """The message catalogue: versions, document codes and allowed segments per message type."""
    text = resources.files("quaywatch.data").joinpath("sim", "edifact.yaml").read_text(encoding="utf-8")
    loaded: dict[str, Any] = load_yaml(text)
    return loaded


@dataclass(frozen=True, slots=True)
class Vessel:
    """The ship a batch of moves belongs to (TDT segment)."""

    name: str
    call_sign: str
    voyage: str
    carrier: str  # SMDG liner code


@dataclass(frozen=True, slots=True)
class GateMove:
    """A truck bringing a box in or taking one out through the gate (CODECO)."""

    container: str
    size_type: str
    weight_kg: int
    direction: str  # gate_in or gate_out
    at: float
    booking: str
    truck: str
    full: bool = True


def escape(value: str) -> str:
    """Precede every EDIFACT special character with the release character ?."""
    return SPECIAL.sub(r"?\1", value)


def segment(tag: str, *elements: Element) -> str:
    """One segment: elements joined by +, components by :, every value escaped, ended by '."""
    parts = [tag]
    for element in elements:
        if isinstance(element, str):
            parts.append(escape(element))
        else:
            components = [escape(component) for component in element]
            while components and components[-1] == "":  # trailing empty components are omitted (ISO 9735)
                components.pop()
            parts.append(":".join(components))
    while len(parts) > 1 and parts[-1] == "":  # and so are trailing empty elements
        parts.pop()
    return "+".join(parts) + "'"


def stamp(epoch: float, timezone: dt.tzinfo) -> str:
    """CCYYMMDDHHMM, format qualifier 203."""
    return dt.datetime.fromtimestamp(epoch, timezone).strftime("%Y%m%d%H%M")


def stowage(bay: int, row: int, tier: int) -> str:
    """ISO 9711 bay-row-tier cell (BBBRRTT), as in LOC+147."""
    return f"{bay:03d}{row:02d}{tier:02d}"


def message(reference_number: str, kind: str, body: list[str]) -> list[str]:
    """UNH, the body, and UNT with the segment count (UNH and UNT included)."""
    entry = reference()["messages"][kind]
    header = segment(
        "UNH", reference_number, (kind, entry["version"], str(entry["release"]), entry["agency"], entry["association"])
    )
    return [header, *body, segment("UNT", str(len(body) + 2), reference_number)]


def interchange(sender: str, recipient: str, control: str, prepared: dt.datetime, messages: Iterable[list[str]]) -> str:
    """UNA, UNB, the messages and UNZ with the message count: one file as sent over FTP or SFTP."""
    batches = list(messages)
    header = segment(
        "UNB", ("UNOA", "2"), (sender, "ZZZ"), (recipient, "ZZZ"),
        (prepared.strftime("%y%m%d"), prepared.strftime("%H%M")), control,
    )  # fmt: skip
    lines = [UNA, header, *[line for batch in batches for line in batch], segment("UNZ", str(len(batches)), control)]
    return "\n".join(lines) + "\n"


def _voyage(vessel: Vessel, qualifier: str = "20") -> str:
    return segment(
        "TDT", qualifier, vessel.voyage, "1", "", (vessel.carrier, "172", "20"), "", "",
        (vessel.call_sign, "103", "", vessel.name),
    )  # fmt: skip


def coarri(
    reference_number: str, kind: str, vessel: Vessel, moves: Sequence[Move], prepared: float, timezone: dt.tzinfo
) -> list[str]:
    """A discharge or loading report (COARRI): one EQD group per box the cranes moved."""
    document = reference()["messages"]["COARRI"]["document"][kind]
    body = [
        segment("BGM", document, f"{reference_number}{kind[0].upper()}", "9"),
        segment("DTM", ("137", stamp(prepared, timezone), "203")),
        segment("RFF", ("VON", vessel.voyage)),
        _voyage(vessel),
        segment("NAD", "CA", (vessel.carrier, "172", "20")),
    ]
    for move in moves:
        body += [
            segment(
                "EQD", "CN", move.container, (move.size_type, "102", "5"), "", "2" if kind == "discharge" else "3", "5"
            ),
            segment("LOC", "147", (stowage(move.bay, move.row, move.tier), "", "5")),
            segment("LOC", "9", (move.port_of_loading, "139", "6")),
            segment("LOC", "11", (move.port_of_discharge, "139", "6")),
            segment("MEA", "AAE", "VGM", ("KGM", str(move.weight_kg))),
            segment("DTM", ("203", stamp(move.locked_at, timezone), "203")),
        ]
    body.append(segment("CNT", ("16", str(len(moves)))))
    return message(reference_number, "COARRI", body)


def codeco(
    reference_number: str, direction: str, terminal: str, moves: Sequence[GateMove], prepared: float,
    timezone: dt.tzinfo, port: str = "NLRTM",
) -> list[str]:  # fmt: skip
    """A gate-in or gate-out report (CODECO): one EQD group per truck visit."""
    document = reference()["messages"]["CODECO"]["document"][direction]
    body = [
        segment("BGM", document, f"{reference_number}{'I' if direction == 'gate_in' else 'O'}", "9"),
        segment("DTM", ("137", stamp(prepared, timezone), "203")),
        segment("NAD", "MS", (terminal, "160", "ZZZ")),
    ]
    for move in moves:
        body += [
            segment("EQD", "CN", move.container, (move.size_type, "102", "5"), "",
                    "2" if direction == "gate_in" else "3", "5" if move.full else "4"),
            segment("RFF", ("BN", move.booking)),
            segment("TMD", "", "", "3"),
            segment("DTM", ("7", stamp(move.at, timezone), "203")),
            segment("LOC", "165", (port, "139", "6"), (terminal, "TER", "ZZZ")),
            segment("MEA", "AAE", "G", ("KGM", str(move.weight_kg))),
            segment("TDT", "1", "", "3", "31", "", "", "", (move.truck, "146", "", "")),
        ]  # fmt: skip
    body.append(segment("CNT", ("16", str(len(moves)))))
    return message(reference_number, "CODECO", body)


def baplie(
    reference_number: str, vessel: Vessel, cells: Sequence[Move], prepared: float, timezone: dt.tzinfo,
    departure: str = "NLRTM", next_port: str = "DEHAM",
) -> list[str]:  # fmt: skip
    """A bay plan (BAPLIE): every occupied stowage cell with its box, weight and ports of loading and discharge."""
    body = [
        segment("BGM", "", reference_number, "9"),
        segment("DTM", ("137", stamp(prepared, timezone), "203")),
        _voyage(vessel),
        segment("LOC", "5", (departure, "139", "6")),
        segment("LOC", "61", (next_port, "139", "6")),
        segment("DTM", ("178", stamp(prepared, timezone), "203")),
    ]
    for cell in cells:
        body += [
            segment("LOC", "147", (stowage(cell.bay, cell.row, cell.tier), "", "5")),
            segment("MEA", "WT", "", ("KGM", str(cell.weight_kg))),
            segment("LOC", "9", (cell.port_of_loading, "139", "6")),
            segment("LOC", "11", (cell.port_of_discharge, "139", "6")),
            segment("EQD", "CN", cell.container, (cell.size_type, "102", "5"), "", "", "5"),
            segment("NAD", "CA", (vessel.carrier, "172", "20")),
        ]
    return message(reference_number, "BAPLIE", body)


# -- reading ------------------------------------------------------------------------------------------------


def split_segments(text: str) -> list[str]:
    """Segments of an interchange, honouring the release character (the UNA line is dropped)."""
    segments: list[str] = []
    current: list[str] = []
    released = False
    body = text[9:] if text.startswith("UNA") else text
    for char in body:
        if released:
            current.append(char)
            released = False
        elif char == RELEASE:
            current.append(char)
            released = True
        elif char == "'":
            segments.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    if "".join(current).strip():
        segments.append("".join(current).strip())
    return segments


def elements(segment_text: str) -> list[list[str]]:
    """Elements of one segment, each a list of unescaped components (the tag is element 0)."""
    result: list[list[str]] = [[]]
    value: list[str] = []
    released = False
    for char in segment_text:
        if released:
            value.append(char)
            released = False
        elif char == RELEASE:
            released = True
        elif char == ":":
            result[-1].append("".join(value))
            value = []
        elif char == "+":
            result[-1].append("".join(value))
            result.append([])
            value = []
        else:
            value.append(char)
    result[-1].append("".join(value))
    return result


def problems(text: str) -> list[str]:
    """Why an interchange is not well formed: envelope and message counts, unknown segments (empty: fine)."""
    catalogue = reference()["messages"]
    found: list[str] = []
    segments = split_segments(text)
    if not segments or not segments[0].startswith("UNB+"):
        return ["the interchange does not start with UNB"]
    if not segments[-1].startswith("UNZ+"):
        found.append("the interchange does not end with UNZ")
    control = elements(segments[0])[5][0] if len(elements(segments[0])) > 5 else ""
    messages = 0
    kind: str | None = None
    count = 0
    for text_segment in segments[1:-1]:
        tag = text_segment[:3]
        if tag == "UNH":
            if kind is not None:
                found.append("UNH before the previous message's UNT")
            parts = elements(text_segment)
            kind, count, number = parts[2][0], 1, parts[1][0]
            if kind not in catalogue:
                found.append(f"unknown message type {kind!r}")
            messages += 1
            continue
        if kind is None:
            found.append(f"segment {tag} outside a message")
            continue
        count += 1
        if tag == "UNT":
            parts = elements(text_segment)
            if parts[1][0] != str(count):
                found.append(f"{kind} {number}: UNT counts {parts[1][0]} segments, the message has {count}")
            if parts[2][0] != number:
                found.append(f"{kind} {number}: UNT reference {parts[2][0]} is not the UNH reference")
            kind = None
        elif kind in catalogue and tag not in catalogue[kind]["segments"]:
            found.append(f"{kind} {number}: segment {tag} is not in the {kind} message")
    if kind is not None:
        found.append(f"{kind} message without UNT")
    trailer = elements(segments[-1])
    if trailer[1][0] != str(messages):
        found.append(f"UNZ counts {trailer[1][0]} messages, the interchange has {messages}")
    if len(trailer) > 2 and trailer[2][0] != control:
        found.append("UNZ control reference is not the UNB one")
    return found
