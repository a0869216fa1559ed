"""Store: the embedded DuckDB database and Parquet export."""
