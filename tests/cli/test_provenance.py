"""``quaywatch provenance``: show, lists, and offline update from a CSL JSON or CSV file."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from quaywatch.cli.main import main

CSL = {
    "total": 3,
    "sources_used": [{"source": "Entity List (EL) - Bureau of Industry and Security"}],
    "results": [
        {
            "name": "Example Port Machinery Co., Ltd.",
            "alt_names": ["EPM"],
            "source": "Entity List (EL) - Bureau of Industry and Security",
            "addresses": [{"address": "1 Quay Road", "city": "Shanghai", "country": "CN"}],
            "start_date": "2026-06-01",
            "federal_register_notice": "91 FR 12345",
            "source_list_url": "https://www.bis.gov/entity-list",
        },
        {
            "name": "CCCC Dredging (Group) Co., Ltd.",
            "source": "Entity List (EL) - Bureau of Industry and Security",
            "addresses": [{"country": "CN"}],
            "start_date": "2020-08-26",
        },
        {
            "name": "Harbour Radio \u001b[31mLtd",
            "source": "Military End User (MEU) List - Bureau of Industry and Security",
            "addresses": [],
            "start_date": "2026-07-01",
        },
    ],
}


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["provenance", *args])
    return result.exit_code, result.stdout, result.stderr


def test_show_json_hikvision(tmp_path: Path) -> None:
    code, out, _ = run("show", "Hikvision", "--json", "--data-dir", str(tmp_path))
    assert code == 0
    data = json.loads(out)
    assert data["country"] == "CN" and data["maker"].startswith("Hangzhou Hikvision")
    assert {"fcc_covered_list", "ndaa_889"} <= {m["list"] for m in data["lists"]}
    assert all(m["sources"][0]["url"] and m["sources"][0]["date"] for m in data["lists"])


def test_show_human_zpmc(tmp_path: Path) -> None:
    code, out, _ = run("show", "zpmc", "--data-dir", str(tmp_path))
    assert code == 0
    assert "China Communications Construction Company Limited" in out and "1260H" in out and "via parent cccc" in out


def test_show_unknown_exits_one(tmp_path: Path) -> None:
    code, _, err = run("show", "Acme \u001b[2J", "--data-dir", str(tmp_path))
    assert code == 1 and "\u001b" not in err and "not in the provenance knowledge base" in err


def test_lists_counts(tmp_path: Path) -> None:
    code, out, _ = run("lists", "--json", "--data-dir", str(tmp_path))
    assert code == 0
    rows = {row["id"]: row for row in json.loads(out)}
    assert set(rows) == {"fcc_covered_list", "ndaa_889", "dod_1260h", "entity_list"}
    assert rows["ndaa_889"]["members"] == 5


def test_update_csl_is_idempotent_and_layered(tmp_path: Path) -> None:
    feed = tmp_path / "consolidated.json"
    feed.write_text(json.dumps(CSL))
    data_dir = tmp_path / "data"
    code, out, err = run("update", str(feed), "--data-dir", str(data_dir))
    assert code == 0, err
    assert "entity_list: 1 entries added" in out and "military_end_user: 1 entries added" in out
    override = data_dir / "provenance" / "lists-override.yaml"
    first = override.read_text()
    code, out, _ = run("update", str(feed), "--data-dir", str(data_dir))
    assert code == 0 and "no change" in out and override.read_text() == first

    code, out, _ = run("show", "EPM", "--json", "--data-dir", str(data_dir))
    assert code == 0
    data = json.loads(out)
    assert data["matched_by"] == "list_member" and data["country"] == "CN"
    assert data["lists"][0]["sources"][0] == {
        "url": "https://www.bis.gov/entity-list",
        "date": "2026-06-01",
        "title": "",
    }
    code, out, _ = run("lists", "--json", "--data-dir", str(data_dir))
    counts = {row["id"]: row["members"] for row in json.loads(out)}
    assert counts["entity_list"] == 13 and counts["fcc_covered_list"] == 11  # shipped data still beneath
    code, out, _ = run("lists", "--data-dir", str(data_dir))
    assert "\u001b" not in out


def test_update_via_environment(tmp_path: Path) -> None:
    feed = tmp_path / "extra.csv"
    feed.write_text(
        "name,list,country,source,date\nQuay Modems Ltd,fcc_covered_list,CN,https://www.fcc.gov/x,2026-05-01\n"
    )
    result = CliRunner(env={"QUAYWATCH_DATA_DIR": str(tmp_path / "env")}).invoke(
        main, ["provenance", "update", str(feed)]
    )
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "env" / "provenance" / "lists-override.yaml").is_file()


def test_update_bad_entry_names_index_and_field(tmp_path: Path) -> None:
    bad = {"results": [CSL["results"][0], {"source": "Entity List (EL) - Bureau of Industry and Security"}]}
    feed = tmp_path / "bad.json"
    feed.write_text(json.dumps(bad))
    code, _, err = run("update", str(feed), "--data-dir", str(tmp_path / "data"))
    assert code == 1
    assert "bad.json" in err and "results[1].name" in err
    assert not (tmp_path / "data" / "provenance" / "lists-override.yaml").exists()


def test_update_bad_csv_row(tmp_path: Path) -> None:
    feed = tmp_path / "bad.csv"
    feed.write_text("name,list,country,source,date\nX Corp,entity_list,CN,not-a-url,2026-01-01\n")
    code, _, err = run("update", str(feed), "--data-dir", str(tmp_path / "data"))
    assert code == 1 and "bad.csv:2: row 1.source" in err
