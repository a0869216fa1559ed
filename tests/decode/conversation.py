"""One TCP connection written packet by packet, for tests of the vectorised segment paths."""

from __future__ import annotations

from pathlib import Path

import dpkt
import pytest

from quaywatch.analysis import Analyzer
from quaywatch.decode.base import Decoder
from quaywatch.decode.dispatch import Dispatcher
from quaywatch.store.database import Store
from tests.factories import tcp_frame, write_pcap

#: A small read window, so a capture spans many batches: the fast path starts with a flow's second batch.
WINDOW = 4096


class Conversation:
    """Segments of a client and a server, each side numbering its own bytes; 12.5 ms between packets."""

    def __init__(self, client: tuple[str, int], server: tuple[str, int]) -> None:
        self.ends = (client, server)
        self.sequence = {0: 1000, 1: 5000}
        self.clock = 1_700_000_000.0
        self.frames: list[tuple[float, bytes]] = []
        (client_ip, client_port), (server_ip, server_port) = client, server
        self.frames.append((self.clock, tcp_frame(client_ip, server_ip, client_port, server_port, dpkt.tcp.TH_SYN,
                                                  b"", 999)))  # fmt: skip
        synack = dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK
        self.frames.append((self.clock, tcp_frame(server_ip, client_ip, server_port, client_port, synack, b"", 4999,
                                                  1000)))  # fmt: skip

    def send(self, side: int, payload: bytes, sequence_number: int | None = None) -> None:
        """``side`` 0 is the client; ``sequence_number`` sends out of turn (the side's counter stays)."""
        (source, source_port), (destination, destination_port) = self.ends if side == 0 else self.ends[::-1]
        number = self.sequence[side] if sequence_number is None else sequence_number
        flags = dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH
        frame = tcp_frame(source, destination, source_port, destination_port, flags, payload, number,
                          self.sequence[1 - side])  # fmt: skip
        self.frames.append((self.clock, frame))
        self.clock += 0.0125
        if sequence_number is None:
            self.sequence[side] += len(payload)

    def write(self, path: Path) -> Path:
        return write_pcap(path, self.frames)


def both_ways(
    tmp_path: Path, capture: Path, decoder: type[Decoder], tables: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> list[list[list[tuple[object, ...]]]]:
    """Every row of ``tables`` with the vectorised paths on, then off (rows sorted: only their set matters)."""
    results = []
    for vectorised in (True, False):
        monkeypatch.setattr(Dispatcher, "VECTORISED", vectorised)
        store = Store(tmp_path / f"{decoder.name}-{vectorised}.duckdb")
        Analyzer(store, decoders=[decoder()], buffer_bytes=WINDOW).analyze(capture)
        results.append(
            [
                sorted(store.connection.execute(f"SELECT * EXCLUDE (capture_id) FROM {t}").fetchall(), key=repr)
                for t in tables
            ]
        )
        store.close()
    return results


def count_vectorised(decoder: type[Decoder], monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Segments handed to ``decoder``'s vectorised path, per call (filled as the analysis runs)."""
    calls: list[int] = []
    original = decoder.decode_segments

    def counting(self: Decoder, *arguments: object) -> object:
        calls.append(len(arguments[1]))  # type: ignore[arg-type]
        return original(self, *arguments)  # type: ignore[arg-type]

    monkeypatch.setattr(decoder, "decode_segments", counting)
    return calls
