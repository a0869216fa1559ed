"""The command line: summaries, JSON, exit codes, escaping."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from quaywatch.cli.main import EXIT_INPUT_PROBLEM, EXIT_OK, EXIT_STORE, main
from quaywatch.cli.text import terminal_safe
from tests.factories import udp_frame, write_pcap


def small_capture(tmp_path: Path) -> Path:
    frames = [(1_700_000_000.0 + i, udp_frame("10.0.0.1", "10.0.0.2", 40000 + i, 53, b"x" * 20)) for i in range(10)]
    return write_pcap(tmp_path / "small.pcap", frames)


def test_json_summary(tmp_path: Path) -> None:
    capture = small_capture(tmp_path)
    result = CliRunner().invoke(main, ["analyze", str(capture), "--db", str(tmp_path / "q.duckdb"), "--json"])
    assert result.exit_code == EXIT_OK, result.output
    summary = json.loads(result.stdout)
    assert summary["packets"] == 10 and summary["flows"] == 10
    assert summary["transports"] == {"udp": 10}
    assert summary["top_talkers"][0]["ip"] in ("10.0.0.1", "10.0.0.2")
    assert summary["captures"][0]["status"] == "complete"
    assert summary["last_ts"] - summary["first_ts"] == 9


def test_human_summary_names_protocols_and_talkers(tmp_path: Path) -> None:
    capture = small_capture(tmp_path)
    result = CliRunner().invoke(main, ["analyze", str(capture), "--db", str(tmp_path / "q.duckdb")])
    assert result.exit_code == EXIT_OK
    for text in ("Captures", "Protocols", "Top talkers", "10.0.0.2", "udp"):
        assert text in result.stdout


def test_not_a_capture_exits_one_with_file_and_offset(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.txt"
    bogus.write_text("crane 4 maintenance log\n")
    result = CliRunner().invoke(main, ["analyze", str(bogus), "--db", str(tmp_path / "q.duckdb"), "--json"])
    assert result.exit_code == EXIT_INPUT_PROBLEM
    assert "notes.txt: byte 0: not a pcap or pcapng capture" in json.loads(result.stdout)["captures"][0]["fault"]


def test_database_error_exits_three(tmp_path: Path) -> None:
    capture = small_capture(tmp_path)
    result = CliRunner().invoke(main, ["analyze", str(capture), "--db", str(tmp_path / "missing" / "q.duckdb")])
    assert result.exit_code == EXIT_STORE


def test_export_writes_parquet(tmp_path: Path) -> None:
    capture = small_capture(tmp_path)
    database = tmp_path / "q.duckdb"
    CliRunner().invoke(main, ["analyze", str(capture), "--db", str(database), "--quiet"])
    result = CliRunner().invoke(main, ["export", "--format", "parquet", str(tmp_path / "out"), "--db", str(database)])
    assert result.exit_code == EXIT_OK
    assert (tmp_path / "out" / "flows.parquet").exists()


def test_terminal_safe_neutralises_escape_sequences_and_markup() -> None:
    hostile = "plc\x1b[2J\x1b]0;owned\x07[red]x[/red]\u202egnp"
    shown = terminal_safe(hostile)
    assert "\x1b" not in shown and "\x07" not in shown and "\u202e" not in shown
    assert "\\x1b" in shown and "\\[red]" in shown


def test_decoders_option(tmp_path: Path) -> None:
    capture = small_capture(tmp_path)
    database = str(tmp_path / "q.duckdb")
    bad = CliRunner().invoke(main, ["analyze", str(capture), "--db", database, "--decoders", "modbus,nosuch"])
    assert bad.exit_code == 2 and "unknown decoder(s) nosuch" in bad.output
    none = CliRunner().invoke(main, ["analyze", str(capture), "--db", database, "--decoders", "none", "--json"])
    assert none.exit_code == EXIT_OK and json.loads(none.stdout)["applications"] == {}


def test_readme_lists_every_decoder_name_that_decoders_takes() -> None:
    """The README's --decoders row is the only place a user learns the names: it must match the registry."""
    import re

    from quaywatch.decode.registry import all_decoders

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    (row,) = [line for line in readme.splitlines() if line.startswith("| `--decoders LIST` |")]
    listed = set(re.findall(r"`([a-z0-9_]+)`", row.split("names:", 1)[1]))
    assert listed == {decoder.name for decoder in all_decoders()}
