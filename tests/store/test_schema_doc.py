from __future__ import annotations

from pathlib import Path

from quaywatch.store.schema_doc import render


def test_committed_schema_doc_is_current() -> None:
    committed = (Path(__file__).resolve().parents[2] / "docs" / "schema.md").read_text(encoding="utf-8")
    assert committed.strip() == render().strip(), "run: .venv/bin/python -m quaywatch.store.schema_doc > docs/schema.md"
