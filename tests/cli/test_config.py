"""The configuration file: quaywatch.toml or --config, command-line precedence, and errors naming file, line, key."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from quaywatch.cli.main import main
from quaywatch.config import ConfigError, load_config
from tests.cli.test_policy_evaluate import site


def test_config_sets_options_and_the_command_line_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    capture, policy_file, declared = site(tmp_path)
    (tmp_path / "quaywatch.toml").write_text(
        f'database = "configured.duckdb"\npolicy = "{policy_file.name}"\ninventory = "{declared.name}"\n'
        'threads = 1\ndecoders = ["dns", "tls"]\n',
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["analyze", str(capture), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["database"] == "configured.duckdb" and "policy_verdicts" in summary
    assert set(summary["applications"]) <= {"dns", "tls"}  # decoders from the file
    assert summary["inventory_findings"]
    result = CliRunner().invoke(main, ["analyze", str(capture), "--db", "other.duckdb", "--json", "--force"])
    assert json.loads(result.stdout.strip().splitlines()[-1])["database"] == "other.duckdb"
    assert (tmp_path / "configured.duckdb").exists() and (tmp_path / "other.duckdb").exists()
    # every command with --db takes it from the file; --config names another file, paths relative to it
    evaluated = CliRunner().invoke(main, ["policy", "evaluate", "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    elsewhere = tmp_path / "etc"
    elsewhere.mkdir()
    (elsewhere / "site.toml").write_text('database = "../other.duckdb"\n', encoding="utf-8")
    os.remove(tmp_path / "quaywatch.toml")
    listed = CliRunner().invoke(main, ["--config", str(elsewhere / "site.toml"), "assets", "--json"])
    assert listed.exit_code == 0 and listed.output.count("\n") >= 5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('database = "a.duckdb"\npolcy = "p.yaml"\n', "site.toml:2: polcy: unknown key"),
        ('\n\nthreads = "four"\n', "site.toml:3: threads: expected an integer from 1 to 256, got 'four'"),
        ("threads = 0\n", "site.toml:1: threads: expected an integer"),
        ('database = "a\n', "site.toml:1: (toml): not valid TOML"),
        ("suppressions = 3\n", "site.toml:1: suppressions: expected a string (path of a suppressions YAML"),
        ('geoip = ["a.mmdb", 4]\n', "site.toml:1: geoip: expected a string or a list of strings (paths of MaxMind"),
    ],
)
def test_errors_name_file_line_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "site.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(str(tmp_path / message.split(":")[0]))
    assert message.split(":", 1)[1] in str(caught.value)
    result = CliRunner().invoke(main, ["--config", str(path), "policy", "check", str(path)])
    assert result.exit_code == 2 and "site.toml:" in result.output


def test_geoip_files_are_one_path_or_a_list_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    listed = tmp_path / "etc" / "site.toml"
    listed.write_text('geoip = ["geo/GeoLite2-Country.mmdb", "/srv/geo/GeoLite2-ASN.mmdb"]\n', encoding="utf-8")
    assert load_config(listed).values["geoip"] == (
        tmp_path / "etc" / "geo" / "GeoLite2-Country.mmdb",
        Path("/srv/geo/GeoLite2-ASN.mmdb"),
    )
    single = tmp_path / "etc" / "one.toml"
    single.write_text('geoip = "dbip-country-lite.mmdb"\n', encoding="utf-8")
    config = load_config(single)
    assert config.values["geoip"] == (tmp_path / "etc" / "dbip-country-lite.mmdb",)
    assert config.defaults({"geoip_files", "database"}) == {
        "geoip_files": (tmp_path / "etc" / "dbip-country-lite.mmdb",)
    }
