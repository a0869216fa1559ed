"""The store's catalogue, read once per detection run: which tables and views exist and their columns.

Every rule and module asks what is there before it reads (a store without SNMP traffic has no ``snmp`` table); each
question is a catalogue query of 1-3 ms, about fifty a run. The engine reads the catalogue once per connection
(after it built the context tables) and keeps it here for the run; the helpers below answer from it and query only
a connection the engine did not register (a test, the analysis). What a module creates itself during the run (its
temporary tables) is not in the reading: no detection asks the catalogue about those.

Each helper answers exactly as the query it replaces: ``tables`` like ``duckdb_tables()`` (tables, main and
temporary), ``views`` like ``duckdb_views()``, ``relations`` like ``information_schema.tables`` of schema main
(tables and views, main and temporary), ``columns`` like ``information_schema.columns`` of schema main (read from
``duckdb_columns()``, of which it is a view, without the system's own tables: a third faster).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import duckdb

_READ = """
SELECT 'table', table_name, NULL, NULL, NULL FROM duckdb_tables()
UNION ALL SELECT 'view', view_name, NULL, NULL, NULL FROM duckdb_views()
UNION ALL SELECT 'relation', table_name, NULL, NULL, NULL FROM information_schema.tables WHERE table_schema = 'main'
UNION ALL SELECT 'column', table_name, column_name, data_type, column_index
    FROM duckdb_columns() WHERE schema_name = 'main' AND NOT internal
"""


@dataclass(frozen=True, slots=True)
class Catalog:
    """One reading of a connection's catalogue."""

    tables: frozenset[str]
    views: frozenset[str]
    relations: frozenset[str]
    #: Per table or view of schema main: column name -> data type, in column order.
    columns: dict[str, dict[str, str]]


def read(con: duckdb.DuckDBPyConnection) -> Catalog:
    """The connection's catalogue now, in one query."""
    tables: set[str] = set()
    views: set[str] = set()
    relations: set[str] = set()
    found: dict[str, list[tuple[int, str, str]]] = {}
    for kind, name, column, data_type, position in con.execute(_READ).fetchall():
        if kind == "table":
            tables.add(str(name))
        elif kind == "view":
            views.add(str(name))
        elif kind == "relation":
            relations.add(str(name))
        else:
            found.setdefault(str(name), []).append((int(position), str(column), str(data_type)))
    columns = {name: {column: kind for _, column, kind in sorted(rows)} for name, rows in found.items()}
    return Catalog(frozenset(tables), frozenset(views), frozenset(relations), columns)


#: The readings of the connections a run registered, by the connection's identity (the connection is kept with it,
#: so that its identity cannot be reused while registered).
_REGISTERED: dict[int, tuple[duckdb.DuckDBPyConnection, Catalog]] = {}


@contextlib.contextmanager
def registered(con: duckdb.DuckDBPyConnection) -> Iterator[Catalog]:
    """Read the connection's catalogue and answer from it until the block ends (the engine's run)."""
    catalog = read(con)
    _REGISTERED[id(con)] = (con, catalog)
    try:
        yield catalog
    finally:
        _REGISTERED.pop(id(con), None)


def _cached(con: duckdb.DuckDBPyConnection) -> Catalog | None:
    entry = _REGISTERED.get(id(con))
    return entry[1] if entry is not None and entry[0] is con else None


def tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    """Every table of the connection, main and temporary (the engine's context tables are temporary)."""
    catalog = _cached(con)
    if catalog is not None:
        return set(catalog.tables)
    return {str(row[0]) for row in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}


def views(con: duckdb.DuckDBPyConnection) -> set[str]:
    """Every view of the connection (the system's too)."""
    catalog = _cached(con)
    if catalog is not None:
        return set(catalog.views)
    return {str(row[0]) for row in con.execute("SELECT view_name FROM duckdb_views()").fetchall()}


def relations(con: duckdb.DuckDBPyConnection) -> set[str]:
    """Tables and views of the main schema (temporary ones too)."""
    catalog = _cached(con)
    if catalog is not None:
        return set(catalog.relations)
    rows = con.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'").fetchall()
    return {str(row[0]) for row in rows}


def columns(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    """The columns of a table or view of the main schema and their data types, in order; empty when absent."""
    catalog = _cached(con)
    if catalog is not None:
        return dict(catalog.columns.get(table, {}))
    rows = con.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'main' AND table_name = ?",
        [table],
    ).fetchall()
    return {str(name): str(kind) for name, kind in rows}
