"""Render the report facts as one self-contained HTML file and the alerts as a formula-safe CSV.

Jinja2 autoescapes every value; nothing packet-derived is ever marked safe. The one ``Markup`` is the network map's
SVG, which assets/netmap.py builds with every string already escaped. The page loads nothing: no script at all, inline
CSS allowed by its sha256 in a Content-Security-Policy that forbids everything else, so even an escaping bug could
not fetch or run anything. Evidence expands with ``<details>``, which needs no JavaScript.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import hashlib
import io
import json
from importlib import resources

import jinja2
from markupsafe import Markup

from quaywatch.cli.assets import csv_safe
from quaywatch.report.collect import TO_BE_COMPLETED, ReportData

#: Columns of the alerts CSV export, in order.
CSV_COLUMNS = (
    "severity", "detection", "title", "confidence", "score", "first_seen", "last_seen", "count", "hosts", "zones",
    "techniques", "explanation", "flow_ids", "community_ids", "packet_numbers", "values", "alert_id", "occurrence_id",
)  # fmt: skip


#: Columns of the evidence values CSV export.
VALUE_COLUMNS = ("occurrence_id", "detection", "severity", "field", "value")


def _template_text(name: str) -> str:
    return resources.files("quaywatch.report").joinpath("templates", name).read_text(encoding="utf-8")


def stylesheet() -> str:
    """The report's CSS, exactly as inlined (its hash goes into the CSP)."""
    return _template_text("report.css")


def style_hash(css: str) -> str:
    """CSP source expression allowing exactly this inline style block."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(css.encode("utf-8")).digest()).decode("ascii") + "'"


def _when(value: dt.datetime | None) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "-"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FunctionLoader(lambda name: _template_text(name)),
        autoescape=True,  # every value, whatever the template's name
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["when"] = _when
    environment.filters["number"] = _number
    environment.filters["thousands"] = lambda value: f"{value or 0:,}"
    return environment


def render_html(data: ReportData) -> str:
    """The whole report as one HTML document."""
    css = stylesheet()
    template = _environment().get_template("report.html.j2")
    return template.render(
        report=data,
        css=Markup(css),  # our own static file, hashed into the CSP below
        csp=f"default-src 'none'; style-src {style_hash(css)}; base-uri 'none'; form-action 'none'",
        map_svg=Markup(data.map_svg),  # assets/netmap.py escapes every string it draws
        to_be_completed=TO_BE_COMPLETED,
    )


def alert_rows(data: ReportData) -> list[list[str]]:
    """The alerts as CSV cells, each neutralised against formula injection (a leading = + - @ tab CR gets a ')."""
    rows = []
    for alert in data.alerts:
        values = {
            "severity": alert["severity"],
            "detection": alert["detection"],
            "title": alert["title"],
            "confidence": f"{alert['confidence']:.2f}",
            "score": "" if alert["score"] is None else f"{alert['score']:.2f}",
            "first_seen": alert["first_seen"],
            "last_seen": alert["last_seen"],
            "count": alert["count"],
            "hosts": alert["hosts"],
            "zones": alert["zones"] or [],
            "techniques": [f"{t['id']} {t['name']}" for t in alert["techniques"] or []],
            "explanation": alert["explanation"],
            "flow_ids": alert["flow_ids"] or [],
            "community_ids": alert["community_ids"] or [],
            "packet_numbers": [str(n) for n in alert["packet_numbers"] or []],
            "values": json.dumps(json.loads(alert["values_json"] or "{}"), ensure_ascii=False),
            "alert_id": alert["alert_id"],
            "occurrence_id": alert["occurrence_id"],
        }
        rows.append([csv_safe(values[column]) for column in CSV_COLUMNS])
    return rows


def value_rows(data: ReportData) -> list[list[str]]:
    """One row per evidence value of every alert (what a spreadsheet filters on), each cell formula-safe."""
    rows = []
    for alert in data.alerts:
        for name, value in json.loads(alert["values_json"] or "{}").items():
            for item in value if isinstance(value, list) else [value]:
                text = item if isinstance(item, str) else json.dumps(item)
                cells = [alert["occurrence_id"], alert["detection"], alert["severity"], name, text]
                rows.append([csv_safe(cell) for cell in cells])
    return rows


def _csv(header: tuple[str, ...], rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def render_csv(data: ReportData) -> str:
    """The alerts CSV export: a header and one row per alert."""
    return _csv(CSV_COLUMNS, alert_rows(data))


def render_values_csv(data: ReportData) -> str:
    """The evidence values CSV export: occurrence, detection, severity, field, value."""
    return _csv(VALUE_COLUMNS, value_rows(data))
