"""Ingest: the only stage that reads capture files."""
